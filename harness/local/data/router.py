"""The names-mode router: one listener on 5432 for every endpoint, routed by TLS SNI.

A client asks for TLS (SSLRequest), the handshake tells the server name it dialled
(`SSLContext.sni_callback`), and the name's first label picks the endpoint and its path
(`<id>` direct, `<id>-pooler` pooled, `cathouse_harness.local.data.names`); from then on the
endpoint's own proxy serves the connection as if it had come to its listener. A client
that sends no server name (an address dialled, an old libpq) may name the endpoint as on
Neon, `options=endpoint%3D<id>` (or `<id>-pooler`) in its startup packet, which the
router reads for it. A client without TLS, or naming no endpoint of this server, gets
one FATAL line. Cancel
requests come in plain TCP and name no endpoint: `cancel` finds the session by its key
(the relay's `CancelKeys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence

from cathouse_harness.local.data.hosts import DEFAULT_PORT
from cathouse_harness.local.data.names import NAME_DOMAIN, POOLER_SUFFIX, route_of
from cathouse_harness.local.data.proxy import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_MAJOR_3,
    SSL_REQUEST,
    TIME_TRAVEL,
    EndpointProxy,
    Startup,
    error_response,
    parse_startup,
    read_preamble,
)
from cathouse_harness.local.data.startup_options import EndpointOptionError, endpoint_named
from cathouse_harness.local.data.tls import TlsMaterial
from cathouse_harness.support.log import get_logger

log = get_logger("local.router")

_HANDSHAKE_TIMEOUT = 30.0
_MAX_PREAMBLE = 10_000


class SniRouter:
    """Listens on `addresses`:5432; `find` gives the open endpoint's proxy by id."""

    def __init__(
        self,
        tls: TlsMaterial,
        find: Callable[[str], EndpointProxy | None],
        cancel: Callable[[bytes], Awaitable[None]],
        find_branch: Callable[[str], EndpointProxy | None] = lambda _branch_id: None,
    ) -> None:
        self._find = find
        # where cancel requests go: they name no endpoint, the relay knows their keys
        self._cancel = cancel
        # a branch id's read-write endpoint: neonctl's time-travel URL names the branch
        # (`<branch-id>.local.localhost`, Neon's host with the branch id for the endpoint's)
        self._find_branch = find_branch
        # the server name each handshake asked for, by its TLS object
        self._names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        self._context = tls.server_context(sni_callback=self._on_sni)
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    def _on_sni(self, tls_object: object, server_name: str | None, _context: ssl.SSLContext) -> None:
        if server_name:
            self._names[tls_object] = server_name

    async def start(self, address: str, *, optional: Sequence[str] = ()) -> None:
        """Listen on `address` (OSError when it cannot), and on each of `optional`
        where it can (::1 beside 127.0.0.1: a name may resolve to either)."""
        self._servers.append(await self._listen(address))
        for extra in optional:
            try:
                self._servers.append(await self._listen(extra))
            except OSError as exc:
                log.info("the endpoint router does not listen on [%s]:%s: %s", extra, DEFAULT_PORT, exc)

    async def _listen(self, address: str) -> asyncio.Server:
        return await asyncio.start_server(self._on_client, address, DEFAULT_PORT, reuse_address=True)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                routed = await self._route(reader, writer)
            if routed is not None:
                proxy, kind, startup = routed
                await proxy.serve_routed(kind, reader, writer, startup)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:  # closing: nobody is left to tell
            pass
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[EndpointProxy, str, Startup | None] | None:
        """Read up to the TLS handshake (and the startup, when the handshake named no
        server); the endpoint's proxy, listener kind and the startup if read, or None
        once the client has been answered (refused, or its cancel forwarded)."""
        while True:
            read = await read_preamble(reader, _MAX_PREAMBLE)
            if read is None:
                return None
            packet, code = read
            if code == GSSENC_REQUEST:
                writer.write(b"N")
                await writer.drain()
                continue
            if code == CANCEL_REQUEST:
                await self._cancel(packet)
                return None
            if code != SSL_REQUEST:
                await _refuse(writer, f"connect with TLS to the endpoint's host name (ep-….{NAME_DOMAIN})")
                return None
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self._context)
            name = self._names.get(writer.get_extra_info("ssl_object"))
            if name is None:
                return await self._route_by_options(reader, writer)
            route = route_of(name)
            proxy = self._find(route[0]) if route is not None else None
            kind = "pooled" if route is not None and route[1] else "direct"
            if route is not None and proxy is None and not route[1]:
                proxy, kind = self._find_branch(route[0]), TIME_TRAVEL
            if route is None or proxy is None:
                await _refuse(writer, f"no endpoint of this server is named '{name}'")
                return None
            return proxy, kind, None

    async def _route_by_options(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[EndpointProxy, str, Startup | None] | None:
        """After a handshake that named no server: the endpoint the startup's options name."""
        read = await read_preamble(reader, _MAX_PREAMBLE)
        if read is None:
            return None
        packet, code = read
        if code == CANCEL_REQUEST:
            await self._cancel(packet)
            return None
        if code >> 16 != PROTOCOL_MAJOR_3:
            await _refuse(writer, "unsupported frontend protocol")
            return None
        version, params = parse_startup(packet[4:])
        try:
            named = endpoint_named(params)
        except EndpointOptionError as refused:
            await _refuse(writer, str(refused))
            return None
        proxy = self._find(named.removesuffix(POOLER_SUFFIX)) if named else None
        if proxy is None:
            await _refuse(
                writer,
                "no server name in the TLS handshake and no endpoint of this server in the "
                f"options: connect to ep-….{NAME_DOMAIN} or add options=endpoint%3D<endpoint id>",
            )
            return None
        kind = "pooled" if named and named.endswith(POOLER_SUFFIX) else "direct"
        return proxy, kind, Startup(version, params, tls=True)


async def _refuse(writer: asyncio.StreamWriter, message: str) -> None:
    writer.write(error_response("08004", message))
    await writer.drain()

