"""The endpoint proxy's relay once a connection is admitted, with CREATE / DROP DATABASE
taken over (`cathouse_harness.local.sql_databases` reads them, a `SqlSession` runs them).

Client to server, the relay frames the stream into messages: the type byte and length
of each, and the text of simple queries ('Q') and Parses ('P') only, which one C-level
search for "database" clears in the common case; every other byte is forwarded as it
arrives. Server to client it only copies, keeping two facts per chunk without framing:
how many ReadyForQuery messages went by (a count of their fixed 5-byte head) and the
last 6 bytes. A statement of ours is answered by the relay itself only when the server
has answered everything sent before it and the last thing it said was ReadyForQuery in
state idle (so our answer cannot overtake one of the server's, and the transaction
state we report is true). Otherwise, and for every statement we refuse, the query is
rewritten into one that raises our error in PostgreSQL, whose answer then comes back in
order and in the right transaction state (in a transaction block, PostgreSQL's own
"cannot run inside a transaction block").
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from cathouse_harness.db.quoting import quote_literal
from cathouse_harness.local.proxy_auth import message, read_message
from cathouse_harness.local.sql_databases import (
    CreateDatabase,
    DropDatabase,
    FeatureUse,
    Refused,
    SqlRefusal,
    Statement,
    classify,
    might_be_ours,
)
from cathouse_harness.support.log import get_logger

log = get_logger("local.sql_relay")

_CHUNK = 256 * 1024
_RFQ_HEAD = b"Z\x00\x00\x00\x05"
# Messages whose whole body the relay reads; the rest stream through.
_QUERY, _PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE, _FLUSH, _SYNC = b"QPBDECHS"
_FUNCTION_CALL, _TERMINATE = b"FX"
# Each of these gets exactly one ReadyForQuery back.
_ANSWERED = frozenset({_QUERY, _SYNC, _FUNCTION_CALL})
_EXTENDED = frozenset({_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE, _FLUSH})

Borrow = Callable[[str], Awaitable[list[list[str | None]]]]


class SqlSession(Protocol):
    """One admitted connection as the catalog sees it: it is counted on its database
    while attached, can be ended (DROP ... WITH (FORCE) by another), and runs our
    statements on its branch. `borrow` runs a query on the connection's own upstream
    session (a copy of the database it is connected to must come from that session:
    PostgreSQL refuses to copy a database another session is on)."""

    def attach(self, end: Callable[[], None]) -> None: ...
    def detach(self) -> None: ...
    async def perform(self, statement: CreateDatabase | DropDatabase, borrow: Borrow) -> None: ...
    def feature_refusal(self, use: FeatureUse) -> str | None: ...


def error_message(sqlstate: str, text: str, *, severity: str = "ERROR", detail: str | None = None) -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", text)]
    if detail:
        fields.append((b"D", detail))
    body = b"".join(code + value.encode() + b"\0" for code, value in fields) + b"\0"
    return message(b"E", body)


def raising_query(sqlstate: str, text: str) -> str:
    """A statement that fails in PostgreSQL with this SQLSTATE and message."""
    return (
        "DO $cathouse$BEGIN RAISE EXCEPTION USING ERRCODE = "
        f"{quote_literal(sqlstate)}, MESSAGE = {quote_literal(text)}; END$cathouse$"
    )


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode("utf-8", "replace"), end + 1


_PARSE_COMPLETE = message(b"1", b"")
_BIND_COMPLETE = message(b"2", b"")
_CLOSE_COMPLETE = message(b"3", b"")
_NO_DATA = message(b"n", b"")
_NO_PARAMETERS = message(b"t", b"\x00\x00")
_READY_IDLE = message(b"Z", b"I")


@dataclass
class _Group:
    """The extended-protocol messages up to a Sync that the relay answers itself."""

    out: list[bytes] = field(default_factory=list)
    failed: bool = False


class Relay:
    """Both directions of one admitted connection."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        session: SqlSession,
    ) -> None:
        self.c_reader, self.c_writer = client
        self.u_reader, self.u_writer = upstream
        self.session = session
        # ReadyForQuery messages owed and seen: the startup's first (whoever
        # authenticates, the server's ReadyForQuery comes through this relay)
        self.owed = 1
        self.seen = 0
        self.tail = b""
        self._group_open = False  # extended messages forwarded since the last Sync
        self._statements: dict[str, CreateDatabase | DropDatabase] = {}
        self._portals: dict[str, CreateDatabase | DropDatabase] = {}
        self._group: _Group | None = None
        self._down: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # ---------------------------------------------------------------- server to client

    async def _copy_down(self) -> None:
        try:
            while True:
                chunk = await self.u_reader.read(_CHUNK)
                if not chunk:
                    break
                # a ReadyForQuery cut by a chunk boundary is found in the 8 bytes around it
                self.seen += chunk.count(_RFQ_HEAD) + (self.tail[-4:] + chunk[:4]).count(_RFQ_HEAD)
                self.tail = chunk[-6:] if len(chunk) >= 6 else (self.tail + chunk)[-6:]
                self.c_writer.write(chunk)
                await self.c_writer.drain()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError):
            pass
        self._closed.set()

    def _quiet_and_idle(self) -> str | None:
        """None when the relay may answer now; else the transaction state ('T'/'E')
        or '?' (answers outstanding, or the last message was not ReadyForQuery)."""
        if self.owed != self.seen or self.tail[:5] != _RFQ_HEAD or self._group_open:
            return "?"
        status = self.tail[5:6]
        return None if status == b"I" else status.decode()

    async def borrow(self, sql: str) -> list[list[str | None]]:
        """Run `sql` on this connection's upstream session, out of the client's sight
        (only while the session is idle: the relay checked that before performing)."""
        down = self._down
        if down is not None:
            down.cancel()
            await asyncio.gather(down, return_exceptions=True)
        try:
            self.u_writer.write(message(b"Q", sql.encode() + b"\0"))
            await self.u_writer.drain()
            rows: list[list[str | None]] = []
            failure: SqlRefusal | None = None
            while True:
                kind, body = await read_message(self.u_reader)
                if kind == b"D":
                    rows.append(_data_row(body))
                elif kind == b"E":
                    failure = _refusal_of(body)
                elif kind == b"Z":
                    break
            if failure is not None:
                raise failure
            return rows
        finally:
            self._down = asyncio.ensure_future(self._copy_down())

    # ---------------------------------------------------------------- client to server

    async def run(self) -> None:
        self._down = asyncio.ensure_future(self._copy_down())
        up = asyncio.ensure_future(self._copy_up())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait([up, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [up, closed] + ([self._down] if self._down is not None else [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _copy_up(self) -> None:
        buffer = b""
        skip = 0  # bytes of a streamed message still to forward
        while True:
            chunk = await self.c_reader.read(_CHUNK)
            if not chunk:
                return
            data = buffer + chunk if buffer else chunk
            pos = sent = 0
            size = len(data)
            while pos < size:
                if skip:
                    step = min(skip, size - pos)
                    pos, skip = pos + step, skip - step
                    continue
                if size - pos < 5:
                    break
                kind = data[pos]
                length = int.from_bytes(data[pos + 1 : pos + 5])
                if self._streams(kind):
                    if kind in _ANSWERED:
                        self.owed += 1
                        self._group_open = False
                    elif kind in _EXTENDED:
                        self._group_open = True
                    skip = 1 + length
                    continue
                end = pos + 1 + length
                if end > size:
                    break
                replacement = await self._inspect(kind, data[pos + 5 : end])
                if replacement is not None:
                    # only what streamed through since the last Sync can precede a
                    # message the relay answers itself, and nothing that awaits an answer
                    self._forward(data[sent:pos] + replacement)
                    sent = end
                pos = end
            if sent < pos:
                self._forward(data[sent:pos])
            buffer = data[pos:]
            await self.u_writer.drain()

    def _streams(self, kind: int) -> bool:
        """Whether a message streams through unread (the common case, decided on its
        type byte alone)."""
        if self._group is not None:
            return False
        if kind in (_QUERY, _PARSE):
            return False
        if kind in (_BIND, _CLOSE):
            return not self._statements
        return True

    def _forward(self, data: bytes) -> None:
        self.u_writer.write(data)

    async def _inspect(self, kind: int, body: bytes) -> bytes | None:
        """A whole message the relay reads: None to forward it as it is, else the bytes
        to forward in its place (b"" for none)."""
        if self._group is not None:
            await self._in_group(kind, body)
            return b""
        if kind == _QUERY:
            return await self._query(body)
        if kind == _PARSE:
            return await self._parse(body)
        if kind == _BIND:
            return await self._bind(body)
        if kind == _CLOSE:
            self._forget(body)
        self._count_forwarded(kind)
        return None

    def _count_forwarded(self, kind: int) -> None:
        if kind in _ANSWERED:
            self.owed += 1
            self._group_open = False
        elif kind in _EXTENDED:
            self._group_open = True

    def _classify(self, text: bytes) -> CreateDatabase | DropDatabase | Refused | None:
        """The statement of ours in a query's text; a FeatureUse is checked here and
        becomes a Refused (rewritten into PostgreSQL's error, in order) or nothing."""
        statement: Statement | None = (
            classify(text.decode("utf-8", "replace")) if might_be_ours(text) else None
        )
        if isinstance(statement, FeatureUse):
            why = self.session.feature_refusal(statement)
            return Refused("0A000", why) if why is not None else None
        return statement

    async def _query(self, body: bytes) -> bytes | None:
        statement = self._classify(body[:-1])
        refusal = self._refusal(statement) if statement is not None else None
        self._group_open = False
        if statement is None or refusal is not None:
            self.owed += 1
            if refusal is None:
                return None
            return message(b"Q", raising_query(refusal.sqlstate, refusal.message).encode() + b"\0")
        assert isinstance(statement, CreateDatabase | DropDatabase)
        answer = await self._perform(statement)
        self._answer(answer + _READY_IDLE)
        return b""

    def _refusal(self, statement: CreateDatabase | DropDatabase | Refused) -> SqlRefusal | None:
        """Why a statement of ours cannot be answered here now, if it cannot."""
        if isinstance(statement, Refused):
            return SqlRefusal(statement.sqlstate, statement.message)
        state = self._quiet_and_idle()
        if state in ("T", "E"):
            return SqlRefusal("25001", f"{statement.tag} cannot run inside a transaction block")
        if state is not None:
            return SqlRefusal(
                "0A000",
                f"{statement.tag} on the local server must be sent on its own, once earlier "
                "statements on the connection have been answered (not pipelined)",
            )
        return None

    async def _perform(self, statement: CreateDatabase | DropDatabase) -> bytes:
        try:
            await self.session.perform(statement, self.borrow)
        except SqlRefusal as refusal:
            return error_message(refusal.sqlstate, refusal.message, detail=refusal.detail)
        except (ConnectionError, asyncio.IncompleteReadError):
            raise  # the connection is gone: nobody to answer
        except Exception:  # a fault of ours: the client gets an error, the log the rest
            log.exception("%s over SQL failed", statement.tag)
            return error_message("XX000", f"{statement.tag} failed in the local server; see its log")
        return message(b"C", statement.tag.encode() + b"\0")

    def _answer(self, data: bytes) -> None:
        self.c_writer.write(data)

    async def _parse(self, body: bytes) -> bytes | None:
        name, pos = _cstr(body, 0)
        self._statements.pop(name, None)  # a new statement under that name
        query_end = body.index(b"\0", pos)
        statement = self._classify(body[pos:query_end])
        refusal = self._refusal(statement) if statement is not None else None
        if statement is None or refusal is not None:
            self._group_open = True
            if refusal is None:
                return None
            text = raising_query(refusal.sqlstate, refusal.message).encode()
            return message(b"P", body[:pos] + text + body[query_end:])
        assert isinstance(statement, CreateDatabase | DropDatabase)
        self._group = _Group()
        await self._in_group(_PARSE, body)
        return b""

    async def _bind(self, body: bytes) -> bytes | None:
        _portal, pos = _cstr(body, 0)
        name, _ = _cstr(body, pos)
        statement = self._statements.get(name)
        if statement is None or self._refusal(statement) is not None:
            self._group_open = True
            return None
        self._group = _Group()
        await self._in_group(_BIND, body)
        return b""

    def _forget(self, body: bytes) -> None:
        name, _ = _cstr(body, 1)
        if body[:1] == b"S":
            self._statements.pop(name, None)
        else:
            self._portals.pop(name, None)

    async def _in_group(self, kind: int, body: bytes) -> None:
        """One message of a group the relay answers (PostgreSQL's replies, as the
        messages ask; after an error everything up to the Sync is skipped, as there)."""
        group = self._group
        assert group is not None
        if kind == _SYNC:
            self._group = None
            self._group_open = False
            self._portals.clear()
            self._answer(b"".join(group.out) + _READY_IDLE)
            return
        if kind == _TERMINATE:
            raise ConnectionResetError("the client said goodbye")
        if group.failed:
            return
        try:
            group.out.append(await self._group_step(kind, body))
        except SqlRefusal as refusal:
            group.failed = True
            group.out.append(error_message(refusal.sqlstate, refusal.message, detail=refusal.detail))
        if kind == _FLUSH:
            self._answer(b"".join(group.out))
            group.out.clear()

    async def _group_step(self, kind: int, body: bytes) -> bytes:
        mixed = SqlRefusal(
            "0A000",
            "CREATE/DROP DATABASE on the local server must be alone between two Syncs",
        )
        if kind == _PARSE:
            name, pos = _cstr(body, 0)
            query, _ = _cstr(body, pos)
            statement = classify(query)
            if not isinstance(statement, CreateDatabase | DropDatabase):
                raise mixed
            self._statements[name] = statement
            return _PARSE_COMPLETE
        if kind == _BIND:
            portal, pos = _cstr(body, 0)
            name, _ = _cstr(body, pos)
            if name not in self._statements:
                raise mixed
            self._portals[portal] = self._statements[name]
            return _BIND_COMPLETE
        if kind == _DESCRIBE:
            name, _ = _cstr(body, 1)
            if body[:1] == b"S" and name in self._statements:
                return _NO_PARAMETERS + _NO_DATA
            if body[:1] == b"P" and name in self._portals:
                return _NO_DATA
            raise mixed
        if kind == _EXECUTE:
            portal, _ = _cstr(body, 0)
            statement = self._portals.get(portal)
            if statement is None:
                raise mixed
            answer = await self._perform(statement)
            if answer[:1] == b"E":
                self._group.failed = True  # type: ignore[union-attr]
            return answer
        if kind == _CLOSE:
            self._forget(body)
            return _CLOSE_COMPLETE
        if kind == _FLUSH:
            return b""
        raise mixed


def _data_row(body: bytes) -> list[str | None]:
    (count,) = struct.unpack("!H", body[:2])
    pos, values = 2, list[str | None]()
    for _ in range(count):
        (length,) = struct.unpack("!i", body[pos : pos + 4])
        pos += 4
        if length < 0:
            values.append(None)
            continue
        values.append(body[pos : pos + length].decode("utf-8", "replace"))
        pos += length
    return values


def _refusal_of(body: bytes) -> SqlRefusal:
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return SqlRefusal(fields.get("C", "XX000"), fields.get("M", "error"), fields.get("D"))
