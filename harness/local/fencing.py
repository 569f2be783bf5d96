"""Fencing a database while it is copied or replaced.

PostgreSQL copies a template's files while its sessions may still write, and commit
status is cluster-wide, so a transaction open during the copy would surface in the
child once it commits. A fence holds new connections to the database (at our endpoint
proxies, and by PAUSE in PgBouncer), lets the transactions open at fence time finish for
a short while, ends what remains, and lets the held connections through on release.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from cathouse_harness.local.pgbouncer import PgBouncer
from cathouse_harness.local.proxy import Fences
from cathouse_harness.support.polling import Backoff, wait_until_async

# How long a fence lets open transactions on the template finish before ending them.
DEFAULT_FENCE_TIMEOUT = 2.0
_POLL = Backoff(0.005)
# pg_terminate_backend only signals: how long to wait for the backends to be gone
_END_TIMEOUT = 10.0
OTHER_SESSIONS = "SELECT {what} FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


@dataclass
class Fencer:
    """Fences on one cluster, reached through its admin pool (and PgBouncer, if any)."""

    pool: asyncpg.Pool
    fences: Fences
    pgbouncer: PgBouncer | None
    # how long open transactions may finish before their sessions are ended
    timeout: float = DEFAULT_FENCE_TIMEOUT

    @contextlib.asynccontextmanager
    async def fence(
        self, database: str, *, idle_shortcut: bool = False
    ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Hold new connections to `database`, let its open transactions finish (bounded),
        end its sessions and PAUSE it in PgBouncer. Yields `tighten()`, which pauses
        PgBouncer if that was skipped (for a copy that found a session after all).

        `idle_shortcut` (copies from a template): when one query finds no session on the
        database at all, PgBouncer holds no server connection to it either, so the PAUSE
        and RESUME (two console round trips) are skipped. PostgreSQL itself makes
        connections that arrive during the copy wait; one that slipped in just before
        makes the copy fail with ObjectInUse, and the caller tightens and retries."""
        self.fences.hold(database)
        pause: asyncio.Task[None] | None = None

        async def tighten() -> None:
            nonlocal pause
            if pause is None and self.pgbouncer is not None:
                pause = asyncio.create_task(self.pgbouncer.pause(database))
                await self.end_sessions(database)
                await asyncio.wait({pause}, timeout=5)

        try:
            idle = idle_shortcut and not await self.pool.fetch(OTHER_SESSIONS.format(what="pid"), database)
            if not idle:
                if self.pgbouncer is not None:
                    pause = asyncio.create_task(self.pgbouncer.pause(database))
                if await self._drain(database, pause):
                    await self.end_sessions(database)
                if pause is not None:
                    # Ending the sessions releases PgBouncer's server connections, so the
                    # PAUSE completes now; if not, the copy still proceeds on a quiet database.
                    await asyncio.wait({pause}, timeout=5)
            yield tighten
        finally:
            try:
                if pause is not None:
                    pause.cancel()
                    await asyncio.gather(pause, return_exceptions=True)
                    assert self.pgbouncer is not None
                    await self.pgbouncer.resume(database)
            finally:
                self.fences.release(database)

    async def _drain(self, database: str, pause: asyncio.Task[None] | None) -> bool:
        """Wait (bounded) until the transactions open on `database` at fence time ended.

        Only those: a busy client may start new ones all the time, and those are ended
        with their sessions anyway, so waiting for a quiet moment could take forever.
        Returns False when no other session was connected at all (nothing to end).
        """
        deadline = time.monotonic() + self.timeout
        query = OTHER_SESSIONS.format(what="pid, xact_start") + " AND xact_start IS NOT NULL"
        # The common case, an idle template, is settled by this one query.
        rows = await self.pool.fetch(OTHER_SESSIONS.format(what="pid, xact_start"), database)
        if not rows:
            # No server connection of PgBouncer's either, so its PAUSE returns at once.
            if pause is not None:
                await asyncio.wait({pause}, timeout=self.timeout)
            return False
        waiting = {(row["pid"], row["xact_start"]) for row in rows if row["xact_start"] is not None}
        if pause is not None:
            # PAUSE returns once PgBouncer's transactions on the database have finished.
            await asyncio.wait({pause}, timeout=self.timeout)

        async def finished() -> bool:
            nonlocal waiting
            if waiting:
                rows = await self.pool.fetch(query, database)
                waiting &= {(row["pid"], row["xact_start"]) for row in rows}
            return not waiting

        # the deadline counts from the fence's start, PgBouncer's PAUSE included
        left = deadline - time.monotonic()
        if waiting and left > 0:
            await wait_until_async(finished, timeout=left, backoff=_POLL)
        return True

    async def end_sessions(self, database: str, *, keep: int = 0) -> None:
        """End the sessions on `database` (but the pool's own and backend `keep`)."""
        others = OTHER_SESSIONS + " AND pid <> $2"
        ended = await self.pool.fetchval(
            others.format(what="count(pg_terminate_backend(pid))"), database, keep
        )
        if not ended:
            return

        async def gone() -> bool:
            return not await self.pool.fetchval(others.format(what="count(*)"), database, keep)

        await wait_until_async(gone, timeout=_END_TIMEOUT, backoff=_POLL)
