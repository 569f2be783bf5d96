"""Authentication at the relay: the client against the role's verifier, then upstream.

The relay (`cathouse_harness.local.data.relay`) checks the client's SCRAM proof against the
verifier it read from the branch's instance, and logs in to the instance (or its
PgBouncer) with the ClientKey that proof gave: no password is stored anywhere.
"""

from __future__ import annotations

import asyncio
import struct

from cathouse_harness.local.data.scram import (
    ClientExchange,
    KeyedClientExchange,
    ScramError,
    ServerExchange,
    Verifier,
)

AUTH_OK = 0
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12
_MAX_AUTH_MESSAGE = 10_000


class AuthFailed(Exception):
    """Authentication did not succeed; `reply` is the ErrorResponse for the client."""

    def __init__(self, reply: bytes) -> None:
        super().__init__("authentication failed")
        self.reply = reply


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _auth(code: int, data: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!I", code) + data)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One typed protocol message: (its type byte, its body)."""
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack("!I", head[1:])[0]
    if length < 4 or length > _MAX_AUTH_MESSAGE:
        raise ScramError("protocol message of a bad length during authentication")
    return kind, await reader.readexactly(length - 4)


def _sasl_initial(body: bytes) -> tuple[str, str]:
    mechanism, _, rest = body.partition(b"\0")
    (size,) = struct.unpack("!i", rest[:4])
    data = rest[4 : 4 + size] if size >= 0 else b""
    return mechanism.decode("ascii", "replace"), data.decode("utf-8", "replace")


async def authenticate_client(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    verifier: str,
    *,
    end_point: bytes | None,
    failure: bytes,
) -> bytes:
    """Run SCRAM with the client up to the server-final message; the ClientKey its proof
    gave, or AuthFailed (carrying `failure`, the ErrorResponse to send) when its proof is
    wrong or malformed."""
    exchange = ServerExchange(Verifier.parse(verifier), end_point=end_point)
    names = b"".join(m.encode() + b"\0" for m in exchange.mechanisms) + b"\0"
    writer.write(_auth(AUTH_SASL, names))
    await writer.drain()
    try:
        kind, body = await read_message(reader)
        if kind != b"p":
            raise ScramError("expected a SASL initial response")
        server_first = exchange.first(*_sasl_initial(body))
        writer.write(_auth(AUTH_SASL_CONTINUE, server_first.encode()))
        await writer.drain()
        kind, body = await read_message(reader)
        if kind != b"p":
            raise ScramError("expected a SASL response")
        server_final = exchange.final(body.decode("utf-8", "replace"))
    except ScramError:
        raise AuthFailed(failure) from None
    writer.write(_auth(AUTH_SASL_FINAL, server_final.encode()))
    return exchange.client_key


async def login_upstream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: str,
    password: str,
    *,
    keys: tuple[bytes, bytes] | None = None,
) -> bytes:
    """Answer the upstream's authentication requests (the startup is already sent); the
    AuthenticationOk to pass on to the client. AuthFailed carries an ErrorResponse the
    upstream sent, ScramError a request we could not answer. With `keys` (ClientKey,
    ServerKey) SCRAM is answered from them, and nothing but SCRAM is."""
    scram: ClientExchange | None = None
    while True:
        kind, body = await read_message(reader)
        if kind == b"E":
            raise AuthFailed(message(kind, body))
        if kind != b"R":
            raise ScramError("the upstream sent a message before authenticating")
        (code,) = struct.unpack("!I", body[:4])
        data = body[4:]
        if code == AUTH_OK:
            return message(kind, body)
        if code == AUTH_SASL:
            scram = ClientExchange(password) if keys is None else KeyedClientExchange(*keys)
            first = scram.first().encode()
            writer.write(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        elif code == AUTH_SASL_CONTINUE and scram is not None:
            writer.write(message(b"p", scram.final(data.decode()).encode()))
        elif code == AUTH_SASL_FINAL and scram is not None:
            scram.check(data.decode())
            continue
        else:
            raise ScramError(f"the upstream asked for authentication method {code}")
        await writer.drain()
