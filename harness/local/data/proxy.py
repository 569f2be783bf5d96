"""An endpoint's listeners and the start of every connection they carry.

Each endpoint gets its own loopback ports (direct and pooled). This module plays the
parts of the PostgreSQL handshake that happen before and at the startup message: SSL
(terminated here with the home's CA), GSS encryption (declined), cancel requests and
the bounded startup packet with Neon's `options=endpoint=` and time-travel options.
What follows the startup is the relay's (`cathouse_harness.local.data.relay.RelayEndpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cathouse_harness.local.data.proxy_auth import message
from cathouse_harness.local.data.startup_options import (
    EndpointOptionError,
    TimeTravel,
    take_endpoint_option,
    take_point_in_time,
)
from cathouse_harness.local.data.tls import TlsMaterial
from cathouse_harness.support.log import get_logger

log = get_logger("local.proxy")

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# Protocol 3.0 and 3.2 (PostgreSQL 18) share the startup layout; the minor is passed on.
PROTOCOL_MAJOR_3 = 3

# The listeners whose logins go to the instance's PgBouncer (the relay's `Route.pooler`).
POOLED_KINDS = ("pooled", "pooled-host")
# What the router hands over for a branch's host name: the direct listener's, for time
# travel connections only (what neonctl's `<branch>@<time>` URL reaches).
TIME_TRAVEL = "time-travel"

_MAX_STARTUP = 10_000
_PIPE_CHUNK = 256 * 1024
_HANDSHAKE_TIMEOUT = 30.0


def error_response(sqlstate: str, text: str) -> bytes:
    """A FATAL ErrorResponse, the one answer a connection gets before it is closed."""
    fields = [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", text)]
    return message(b"E", b"".join(code + value.encode() + b"\0" for code, value in fields) + b"\0")


def parse_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """The protocol version and parameters of a StartupMessage body (after the length)."""
    (version,) = struct.unpack("!I", body[:4])
    parts = body[4:].split(b"\0")
    params: dict[str, str] = {}
    for key, value in zip(parts[0::2], parts[1::2], strict=False):
        if not key:
            break
        params[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return version, params


async def read_preamble(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, int] | None:
    """One packet of what a client sends before its startup is done (an SSL, GSS or
    cancel request, or the startup message): the whole packet and its code, or None when
    its length is out of bounds."""
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if length < 8 or length > limit:
        return None
    body = await reader.readexactly(length - 4)
    (code,) = struct.unpack("!I", body[:4])
    return struct.pack("!I", length) + body, code


def build_startup(version: int, params: Mapping[str, str]) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class Refusal(Exception):
    """A gate's refusal of a connection: sent to the client as a FATAL error."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@dataclass(frozen=True)
class Startup:
    version: int
    params: dict[str, str]
    tls: bool
    # the moment a time-travel connection asks for (taken out of `params`' options)
    at: TimeTravel | None = None


def moment_asked(kind: str, startup: Startup, time_travel: bool, arrived: float | None) -> TimeTravel | None:
    """The moment a connection asks for, stamped with its arrival; a Refusal when the
    listener it came to does not serve it (a pooled one), or when it came to a branch's
    host (names mode: `time_travel`) and asks for none."""
    if startup.at is not None and kind in POOLED_KINDS:
        raise Refusal("08004", "time travel connections take the direct host; drop -pooler")
    if time_travel and startup.at is None:
        raise Refusal("08004", "a branch's host serves time travel connections only: add "
                      "options=neon_timestamp:<time> or neon_lsn:<lsn>, or use the endpoint's host")
    return startup.at if startup.at is None else replace(startup.at, arrived=arrived)


@dataclass
class _Listener:
    kind: str
    server: asyncio.Server
    port: int
    connections: set[asyncio.Task[None]] = field(default_factory=set)


class EndpointProxy:
    """The listeners of one endpoint and the connections they carry."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        tls: TlsMaterial | None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.tls = tls
        # hosts of the endpoint's own its certificate must name too (`TlsMaterial.for_hosts`),
        # signed at the first handshake, not when the endpoint opens: a fork's endpoint is
        # answered before any client comes, and many never see one
        self.tls_hosts: tuple[str, ...] = ()
        # told when a client connects or leaves: an app using its branch keeps the
        # local server from idling out just as API requests do
        self.on_activity = on_activity
        self._listeners: dict[str, _Listener] = {}

    def disconnect_all(self) -> None:
        """End every client connection (a suspended or restarted compute); the
        listeners stay, so the next connection is served as before."""
        for listener in self._listeners.values():
            for task in list(listener.connections):
                task.cancel()

    def port(self, kind: str) -> int:
        return self._listeners[kind].port

    @property
    def open_connections(self) -> int:
        return sum(len(listener.connections) for listener in self._listeners.values())

    def _active(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    async def listen(
        self,
        kind: str,
        port: int,
        *,
        host: str = "127.0.0.1",
        exact: bool = False,
    ) -> int:
        """Start a listener on `host`:`port` if free, else (unless `exact`, which raises
        OSError) on a port the kernel picks."""
        holder: dict[str, _Listener] = {}

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(holder["listener"], reader, writer)

        server = None
        for candidate in ([port] if port else []) + ([] if exact else [0]):
            try:
                server = await asyncio.start_server(on_client, host, candidate, reuse_address=True)
                break
            except OSError:
                if exact:
                    raise
        if server is None:
            raise OSError(f"no free port on {host}")
        bound = int(server.sockets[0].getsockname()[1])
        listener = _Listener(kind, server, bound)
        holder["listener"] = listener
        self._listeners[kind] = listener
        return bound

    async def serve_routed(
        self,
        kind: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: Startup | None = None,
    ) -> None:
        """Serve a connection another listener accepted (the names-mode router, after TLS
        told it the endpoint, or after the startup's options did: then with `startup`
        already read) as if it had come to this endpoint's `kind` listener (TIME_TRAVEL:
        the direct one, for a time-travel connection only)."""
        listener = self._listeners["direct" if kind == TIME_TRAVEL else kind]
        await self._handle(listener, reader, writer, startup, time_travel=kind == TIME_TRAVEL)

    async def _handle(
        self,
        listener: _Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: Startup | None = None,
        *,
        time_travel: bool = False,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        arrived = time.time()  # before this connection counts as the branch's client
        listener.connections.add(task)
        self._active()
        try:
            await self._serve(listener, reader, writer, startup, arrived, time_travel)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            ssl.SSLError,
            TimeoutError,
            OSError,
        ):
            pass
        except asyncio.CancelledError:
            # Closing the endpoint cancels its connections; the stream machinery would
            # log a cancelled handler as an error, and nobody is left to tell.
            pass
        finally:
            listener.connections.discard(task)
            self._active()
            _close(writer)

    async def close(self) -> None:
        for listener in self._listeners.values():
            listener.server.close()
            for task in list(listener.connections):
                task.cancel()
        for listener in self._listeners.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.server.wait_closed(), 5)
            if listener.connections:
                await asyncio.wait(list(listener.connections), timeout=5)
        self._listeners.clear()

    async def _serve(
        self,
        listener: _Listener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: Startup | None = None,
        arrived: float | None = None,
        time_travel: bool = False,
    ) -> None:
        """A connection after its preamble: the relay's (`RelayEndpoint`)."""
        raise NotImplementedError

    async def _startup(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: Startup | None,
    ) -> Startup | None:
        """The client's startup (read here unless a router did) without its endpoint
        option; None once the client has been answered (a cancel, a refusal)."""
        if startup is None:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                startup = await self._read_startup(reader, writer)
        if startup is not None:
            startup = await self._without_endpoint_option(startup, writer)
        return startup

    async def _read_startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Startup | None:
        # a routed connection arrives with TLS done (the router read the server name)
        tls_done = writer.get_extra_info("ssl_object") is not None
        while True:
            read = await read_preamble(reader, _MAX_STARTUP)
            if read is None:
                return None
            packet, code = read
            if code == SSL_REQUEST and not tls_done:
                if self.tls is not None and self.tls_hosts:
                    self.tls, self.tls_hosts = self.tls.for_hosts(self.tls_hosts), ()
                if self.tls is None:
                    writer.write(b"N")
                    await writer.drain()
                    continue
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls.context)
                tls_done = True
                continue
            if code == GSSENC_REQUEST:
                writer.write(b"N")
                await writer.drain()
                continue
            if code == CANCEL_REQUEST:
                await self.cancel(packet)
                return None
            if code >> 16 != PROTOCOL_MAJOR_3:
                writer.write(error_response("08P01", "unsupported frontend protocol"))
                await writer.drain()
                return None
            version, params = parse_startup(packet[4:])
            return Startup(version, params, tls_done)

    async def cancel(self, packet: bytes) -> None:
        """A cancel request that came to one of the listeners (the relay's: by its key)."""
        raise NotImplementedError

    async def _without_endpoint_option(
        self, startup: Startup, writer: asyncio.StreamWriter
    ) -> Startup | None:
        """`startup` once its endpoint option, if any, names this endpoint (None once a
        refusal is sent), and with the moment of a time-travel connection taken out of
        its options: Neon's words, which PostgreSQL would take for command-line words of
        its own and refuse."""
        try:
            params = take_endpoint_option(startup.params, self.endpoint_id)
            at, params = take_point_in_time(params)
        except EndpointOptionError as refused:
            writer.write(error_response("08004", str(refused)))
            await writer.drain()
            return None
        return Startup(startup.version, params, startup.tls, at)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await reader.read(_PIPE_CHUNK)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
    finally:
        # Closing rather than half-closing: PostgreSQL has no use for a half-open session.
        _close(writer)


async def _pipe_both(
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    u_reader: asyncio.StreamReader,
    u_writer: asyncio.StreamWriter,
) -> None:
    tasks = [
        asyncio.ensure_future(_copy(c_reader, u_writer)),
        asyncio.ensure_future(_copy(u_reader, c_writer)),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        del results


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
