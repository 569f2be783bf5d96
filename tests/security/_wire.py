"""A PostgreSQL client at the wire level, through a handed-out URL (TLS with its SNI and
CA, SCRAM): for what a driver never sends, such as half of a Query message."""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from cathouse_harness.local.data.proxy import build_startup
from cathouse_harness.local.data.proxy_auth import login_upstream, message, read_message

_SSL_REQUEST = struct.pack("!II", 8, 80877103)
PROTOCOL_3 = 196608


@dataclass
class WireSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def until_ready(self) -> list[tuple[bytes, bytes]]:
        """The messages up to ReadyForQuery (included)."""
        found = []
        while True:
            kind, body = await read_message(self.reader)
            found.append((kind, body))
            if kind == b"Z":
                return found

    def close(self) -> None:
        self.writer.close()


async def tls_startup(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """SSLRequest, TLS against the URL's CA and host name, and its startup packet (no
    password yet): the endpoint answers with an authentication request."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5432)
    writer.write(_SSL_REQUEST)
    await writer.drain()
    assert await reader.readexactly(1) == b"S"
    context = ssl.create_default_context(cafile=unquote(query["sslrootcert"][0]))
    await writer.start_tls(context, server_hostname=parts.hostname)
    database = parts.path.lstrip("/")
    writer.write(build_startup(PROTOCOL_3, {"user": unquote(parts.username or ""), "database": database}))
    await writer.drain()
    return reader, writer


async def open_session(url: str) -> WireSession:
    """A logged-in session through `url`, ready for a query."""
    reader, writer = await tls_startup(url)
    parts = urlsplit(url)
    await login_upstream(reader, writer, unquote(parts.username or ""), unquote(parts.password or ""))
    session = WireSession(reader, writer)
    ready = await session.until_ready()
    assert not any(kind == b"E" for kind, _ in ready), ready
    return session


def query_message(text: bytes) -> bytes:
    return message(b"Q", text + b"\0")
