"""The byte relay in front of a branch's own PostgreSQL instance (#24, the instance data plane).

An endpoint keeps its addresses (listeners, the SNI router, `options=endpoint=`), TLS
with the home's CA and the bounded startup packet of `cathouse_harness.local.data.proxy`;
what changes is everything after the startup:

- the endpoint's instance is found and started when it is suspended (a read-only
  endpoint's and a time-travel connection's: a hot standby, `compute.moments.reads`);
- the client runs SCRAM (with channel binding over TLS) against the role's verifier read
  from that instance's `pg_authid` at this login, so `ALTER ROLE … PASSWORD` holds at
  once; an unknown role, a role that cannot log in, a superuser and an unknown database
  all get a mock exchange that fails exactly as a wrong password does;
- only after the proof held is the instance's unix socket opened, and the relay logs in
  there with the ClientKey the proof gave (as PgBouncer's SCRAM pass-through does): no
  password is stored anywhere and nothing is opened upstream for an unproven client;
- from then on bytes are copied both ways in fixed chunks; the session's BackendKeyData
  is remembered so a cancel request (which names no endpoint) reaches its instance.

On the pooled listeners the login goes to the instance's PgBouncer instead
(`cathouse_harness.local.compute.pooler`), with the same ClientKey; PgBouncer checks it
against the same verifier and logs in to the instance with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.data.proxy import (
    POOLED_KINDS,
    EndpointProxy,
    Refusal,
    Startup,
    _close,
    _Listener,
    _pipe_both,
    build_startup,
    error_response,
    moment_asked,
)
from cathouse_harness.local.data.proxy_auth import (
    AuthFailed,
    authenticate_client,
    login_upstream,
    message,
    read_message,
)
from cathouse_harness.local.data.scram import ScramError, Verifier
from cathouse_harness.local.data.startup_options import TimeTravel
from cathouse_harness.local.data.tls import TlsMaterial
from cathouse_harness.support.log import get_logger

log = get_logger("local.relay")

_HANDSHAKE_TIMEOUT = 30.0
_MOCK_ITERATIONS = 4096  # PostgreSQL's default: a mock exchange looks like a real one
_MOCK_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Route:
    """Where an endpoint's sessions go: its instance's socket file, the startup
    parameters it adds (a read-only endpoint's), and how to read a role's verifier."""

    socket: Path
    # (role, database) -> the role's SCRAM verifier when it may log in to that database
    verifier: Callable[[str, str], Awaitable[str | None]]
    extra: Mapping[str, str] = field(default_factory=dict)
    # called once the connection routed here has ended (a standby counts its users)
    release: Callable[[], None] | None = None
    # (role, its verifier) -> the socket a pooled login goes to once the client proved
    # it (the instance's PgBouncer, told that verifier); None: pooled is direct
    pooler: Callable[[str, str], Awaitable[Path]] | None = None


# endpoint id and the moment a time-travel connection asks for (None: now) -> its route
# (the instance started); Refusal when it has none
Resolver = Callable[[str, TimeTravel | None], Awaitable[Route]]


def mock_verifier(user: str) -> str:
    """A verifier no password matches, with a salt fixed per role name for this process:
    asking twice for an unknown role shows the same salt, as for a real one."""
    salt = hmac.new(_MOCK_SECRET, user.encode(), hashlib.sha256).digest()[:16]
    keys = [base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(2)]
    return f"SCRAM-SHA-256${_MOCK_ITERATIONS}:{base64.b64encode(salt).decode()}${keys[0]}:{keys[1]}"


class CancelKeys:
    """BackendKeyData of the relayed sessions, and the instance socket each came from."""

    def __init__(self) -> None:
        self._sockets: dict[bytes, Path] = {}

    def add(self, key: bytes, socket: Path) -> None:
        self._sockets[key] = socket

    def discard(self, key: bytes) -> None:
        self._sockets.pop(key, None)

    def __len__(self) -> int:
        return len(self._sockets)

    async def cancel(self, packet: bytes) -> None:
        """Forward a CancelRequest to the instance whose session has its key; an unknown
        key is dropped, as PostgreSQL drops one (no answer either way)."""
        socket = self._sockets.get(packet[8:])
        if socket is None:
            return
        up_writer = None
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_unix_connection(str(socket))
                up_writer.write(packet)
                await up_writer.drain()
                await up_reader.read()
        if up_writer is not None:
            _close(up_writer)


class RelayEndpoint(EndpointProxy):
    """One endpoint's listeners, relaying to the branch's instance (see the module)."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        resolve: Resolver,
        keys: CancelKeys,
        tls: TlsMaterial | None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(endpoint_id, tls=tls, on_activity=on_activity)
        self.resolve = resolve
        self.keys = keys

    async def cancel(self, packet: bytes) -> None:
        await self.keys.cancel(packet)

    async def _serve(
        self,
        listener: _Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: Startup | None = None,
        arrived: float | None = None,
        time_travel: bool = False,
    ) -> None:
        startup = await self._startup(reader, writer, startup)
        if startup is None:
            return
        params = dict(startup.params)
        user = params.get("user", "")
        params["database"] = database = params.get("database") or user
        failure = error_response("28P01", f'password authentication failed for user "{user}"')
        end_point = self.tls.end_point if startup.tls and self.tls is not None else None
        route: Route | None = None
        try:
            try:
                async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                    route = await self.resolve(
                        self.endpoint_id, moment_asked(listener.kind, startup, time_travel, arrived))
                    verifier = await route.verifier(user, database) or mock_verifier(user)
                    client_key = await authenticate_client(
                        reader, writer, verifier, end_point=end_point, failure=failure
                    )
                    socket = route.socket
                    if listener.kind in POOLED_KINDS and route.pooler is not None:
                        socket = await route.pooler(user, verifier)
            except Refusal as refusal:
                writer.write(error_response(refusal.sqlstate, refusal.message))
                await writer.drain()
                return
            except LocalServerError as exc:  # the instance or its PgBouncer would not start
                log.warning("endpoint %s: %s", self.endpoint_id, exc)
                line = f"the branch's database server is not available: {exc.message}"
                writer.write(error_response("08006", line))
                await writer.drain()
                return
            except AuthFailed as failed:
                writer.write(failed.reply)
                await writer.drain()
                return
            params.update(route.extra)
            await self._relay(socket, startup.version, params, verifier, client_key, reader, writer)
        finally:
            if route is not None and route.release is not None:
                route.release()

    async def _relay(
        self,
        socket: Path,
        version: int,
        params: dict[str, str],
        verifier: str,
        client_key: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(socket))
        except OSError:
            writer.write(error_response("08006", "the branch's database server is not reachable"))
            await writer.drain()
            return
        key = b""
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                up_writer.write(build_startup(version, params))
                await up_writer.drain()
                keys = (client_key, Verifier.parse(verifier).server_key)
                writer.write(await login_upstream(up_reader, up_writer, params["user"], "", keys=keys))
                key = await _until_ready(up_reader, writer)
            if not key:
                return
            self.keys.add(key, socket)
            await _pipe_both(reader, writer, up_reader, up_writer)
        except AuthFailed as failed:  # the password changed between our read and its check
            writer.write(failed.reply)
            await writer.drain()
        except ScramError as exc:
            log.warning("the relay could not log in to the instance of %s: %s", self.endpoint_id, exc)
            writer.write(error_response("08006", "the branch's database server refused the login"))
            await writer.drain()
        finally:
            if key:
                self.keys.discard(key)
            _close(up_writer)


async def _until_ready(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Pass the session's start (ParameterStatus, BackendKeyData, ReadyForQuery) to the
    client, each message bounded; the BackendKeyData's pid and key, or b"" when the
    instance ended the session instead (its error is passed on)."""
    key = b""
    while True:
        kind, body = await read_message(up_reader)
        writer.write(message(kind, body))
        if kind == b"K":
            key = body
        elif kind == b"E":
            await writer.drain()
            return b""
        elif kind == b"Z":
            await writer.drain()
            return key or struct.pack("!I", 0)
