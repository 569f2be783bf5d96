"""db_session's machinery, without pytest: a session on a branch whose work is rolled
back, and the connections kept between tests that share an event loop.

`KeptConnections` owns one engine per pooled URL for the process (SQLAlchemy initialises
its dialect on an engine's first connect, several queries, so a new engine per test paid
that every time; NullPool: no pooled connection outlives the loop that opened it) and,
when the caller's loop outlives a test (pytest-asyncio's loop scope module/package/
session), the connection kept for the next test. The plugin keeps one instance in its
state and hands it out through a fixture; benchmarks make their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cathouse_harness.db.urls import normalize_asyncpg_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession


def session_engine(pooled_url: str) -> AsyncEngine:
    """An engine for one-off sessions on `pooled_url`: NullPool, and the asyncpg settings
    that are safe behind PgBouncer in transaction mode (the pooled URL may be one)."""
    from cathouse_harness.config.settings import ServiceConfig
    from cathouse_harness.db.engines import engine_kwargs, tls_connect_args
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    kwargs = engine_kwargs(ServiceConfig(name="db-session"), pgbouncer=True)
    connect_args = {**kwargs["connect_args"], **tls_connect_args(pooled_url)}
    return create_async_engine(
        normalize_asyncpg_url(pooled_url), poolclass=NullPool, connect_args=connect_args
    )


@dataclass
class _HeldConnection:
    """A connection kept open across tests that run on the same event loop."""

    loop: asyncio.AbstractEventLoop
    connection: AsyncConnection
    resets: int  # the branch session's reset count when it connected


class KeptConnections:
    def __init__(self) -> None:
        self._engines: dict[str, AsyncEngine] = {}
        self._held: dict[str, _HeldConnection] = {}

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def drop(self, url: str) -> None:
        """Close a kept connection. It holds no transaction (each test's is rolled back), so
        when its loop cannot run here any more, aborting its socket loses nothing."""
        held = self._held.pop(url, None)
        if held is None:
            return
        loop = held.loop
        if not loop.is_closed() and asyncio._get_running_loop() is None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(held.connection.close())
                return
        with contextlib.suppress(Exception):
            # Closes the socket without the loop and tells SQLAlchemy the connection is gone.
            held.connection.sync_connection.invalidate()  # type: ignore[union-attr]

    def close_all(self) -> None:
        for url in list(self._held):
            self.drop(url)

    async def _connection(self, url: str, keep: bool, resets: int) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        held = self._held.get(url)
        if held is not None:
            connection = held.connection
            if (held.loop is loop and held.resets == resets and not connection.closed
                    and not connection.invalidated):
                return connection
            self.drop(url)
        engine = self._engines.get(url)
        if engine is None:
            engine = self._engines[url] = session_engine(url)
        connection = await engine.connect()
        if keep:
            self._held[url] = _HeldConnection(loop, connection, resets)
        return connection

    @contextlib.asynccontextmanager
    async def rolled_back_session(
        self, url: str, *, keep: bool, resets: Callable[[], int] = lambda: 0
    ) -> AsyncIterator[AsyncSession]:
        """db_session's work around one test: a session in a transaction on `url` that is
        rolled back afterwards, even when the code under test commits (commits become
        savepoint releases). `keep` leaves the connection open for the next test on this
        loop; `resets` counts branch restores (a restore ends the branch's connections)."""
        from sqlalchemy.ext.asyncio import AsyncSession

        resets_at_start = resets()
        connection = await self._connection(url, keep, resets_at_start)
        try:
            transaction = await connection.begin()
            session = AsyncSession(
                bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
            try:
                yield session
            finally:
                if resets() != resets_at_start:
                    # The test restored the branch: that ended this connection and discarded
                    # its work; there is nothing to roll back and nothing to send.
                    await connection.invalidate()
                    await session.close()
                else:
                    try:
                        # One ROLLBACK ends the savepoints with the outer transaction;
                        # closing the session afterwards has nothing left to send.
                        if transaction.is_active:
                            await transaction.rollback()
                    finally:
                        await session.close()
        except BaseException:
            if keep:
                self._held.pop(url, None)
            await connection.close()
            raise
        if not keep or connection.invalidated:
            self._held.pop(url, None)
            await connection.close()
