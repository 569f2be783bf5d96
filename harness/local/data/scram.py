"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides, no I/O.

The relay is the server for clients (against the verifier in the branch's instance's
`pg_authid`) and the client of the instance or its PgBouncer (with the ClientKey the
client's proof gave). `SCRAM-SHA-256-PLUS` with `tls-server-end-point` binds the exchange
to the endpoint's certificate, so `channel_binding=require` clients connect.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cathouse_harness.errors import HarnessError

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
END_POINT = "tls-server-end-point"


class ScramError(HarnessError):
    """A SCRAM exchange that failed: a bad message, a wrong proof."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, text: str | bytes) -> bytes:
    return hmac.new(key, text.encode() if isinstance(text, str) else text, hashlib.sha256).digest()


def _attributes(message: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError("malformed SCRAM message")
        found.setdefault(key, value)
    return found


@dataclass(frozen=True)
class Verifier:
    """A stored SCRAM secret: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            kind, head, keys = text.split("$")
            iterations, salt = head.split(":")
            stored, server = keys.split(":")
            if kind != SCRAM:
                raise ValueError(kind)
            decoded = (base64.b64decode(v) for v in (salt, stored, server))
            return cls(int(iterations), *decoded)
        except ValueError:
            raise ScramError("not a SCRAM-SHA-256 verifier") from None


class ServerExchange:
    """The proxy's side: feed the client's two messages, send back what is returned."""

    def __init__(self, verifier: Verifier, *, end_point: bytes | None) -> None:
        self.verifier = verifier
        # the certificate hash when TLS is on: PLUS is offered, and a client that says
        # "y" (could bind, thinks we cannot) is being downgraded
        self.end_point = end_point
        self._first_bare = ""
        self._server_first = ""
        # the client's ClientKey, recovered from a proof that held: what a relay logs
        # in upstream with against the same verifier (PgBouncer's SCRAM pass-through)
        self.client_key = b""
        self._header = ""
        self._nonce = ""

    @property
    def mechanisms(self) -> list[str]:
        return [SCRAM_PLUS, SCRAM] if self.end_point is not None else [SCRAM]

    def first(self, mechanism: str, client_first: str) -> str:
        if mechanism not in self.mechanisms:
            raise ScramError(f"SASL mechanism {mechanism!r} is not offered")
        flag, _, rest = client_first.partition(",")
        authzid, _, bare = rest.partition(",")
        binds = flag.startswith("p=")
        if binds != (mechanism == SCRAM_PLUS) or (binds and flag != f"p={END_POINT}"):
            raise ScramError("SCRAM channel binding does not match the mechanism")
        if flag == "y" and self.end_point is not None:
            raise ScramError("SCRAM channel binding was refused although the server offers it")
        if flag not in ("n", "y") and not binds:
            raise ScramError("malformed SCRAM message")
        client_nonce = _attributes(bare).get("r")
        if not client_nonce:
            raise ScramError("SCRAM client nonce missing")
        self._header = f"{flag},{authzid},"
        self._first_bare = bare
        self._nonce = client_nonce + _b64(secrets.token_bytes(18))
        v = self.verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        """The server-final message when the client's proof holds; ScramError otherwise."""
        without_proof, _, proof_part = client_final.rpartition(",p=")
        found = _attributes(without_proof)
        binding = self._header.encode()
        if self._header.startswith("p="):
            assert self.end_point is not None
            binding += self.end_point
        if found.get("c") != _b64(binding) or found.get("r") != self._nonce:
            raise ScramError("SCRAM channel binding or nonce does not match")
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}"
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ScramError("malformed SCRAM proof") from None
        signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("malformed SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramError("wrong password")
        self.client_key = client_key
        return "v=" + _b64(_hmac(self.verifier.server_key, auth_message))


@functools.lru_cache(maxsize=256)
def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    # The internal password and its salt change only with the role: key stretching
    # once per role and server process, not once per connection.
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


class ClientExchange:
    """The proxy as a client of PostgreSQL or PgBouncer (no channel binding: loopback)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self._bare = "n=,r=" + _b64(secrets.token_bytes(18))
        self._server_signature = b""

    def first(self) -> str:
        return "n,," + self._bare

    def final(self, server_first: str) -> str:
        found = _attributes(server_first)
        try:
            nonce, salt, iterations = found["r"], base64.b64decode(found["s"]), int(found["i"])
        except (KeyError, ValueError):
            raise ScramError("malformed SCRAM server message") from None
        if not nonce.startswith(_attributes(self._bare)["r"]):
            raise ScramError("SCRAM server nonce does not extend ours")
        client_key, server_key = self._keys(salt, iterations)
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._bare},{server_first},{without_proof}"
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}"

    def _keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        """(ClientKey, ServerKey) for the server's salt and iterations."""
        salted = _salted(self.password, salt, iterations)
        return _hmac(salted, "Client Key"), _hmac(salted, "Server Key")

    def check(self, server_final: str) -> None:
        if _attributes(server_final).get("v") != _b64(self._server_signature):
            raise ScramError("the server's SCRAM signature does not match")


class KeyedClientExchange(ClientExchange):
    """A client that holds the keys, not the password: a ClientKey recovered from a
    client's proof and the ServerKey of the verifier it was checked against. It logs in
    wherever that verifier is stored (the same salt and iterations)."""

    def __init__(self, client_key: bytes, server_key: bytes) -> None:
        super().__init__("")
        self._held = (client_key, server_key)

    def _keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        return self._held


_SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it, so the password never travels as SQL."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt_b64, stored_b64, server_b64 = (base64.b64encode(v).decode() for v in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"

