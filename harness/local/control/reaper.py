"""The reaper: expired branches (and snapshots) of the local server are deleted, as
Neon's background job deletes them.

A branch is due once its `expires_at` has passed. The rules keep such a branch from
being the default, protected or a parent (`branching`); a branch that became one anyway
(restored state, a state file from an older server) stays until it no longer is. The
reaper waits while the project has running operations, as a client's mutation would, so
it never deletes a branch that is being copied or changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cathouse_harness.local.control.state import BranchRecord, now, parse_time
from cathouse_harness.support.log import get_logger

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore

log = get_logger("local.reaper")


class Reaper:
    def __init__(self, neon: NeonCore, interval: float) -> None:
        self.neon = neon
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="cathouse-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    def expired(self) -> Iterable[BranchRecord]:
        neon = self.neon
        if neon.ops.blocking() is not None:
            return
        current = now()
        for branch in neon.live_branches():
            if (
                branch.expires_at
                and not branch.default
                and not branch.protected
                and parse_time(branch.expires_at) <= current
                and not neon.children(branch.id)
            ):
                yield branch

    def reap_once(self) -> list[str]:
        reaped = []
        for branch in list(self.expired()):
            log.info("branch %s (%s) expired at %s; deleting it", branch.id, branch.name, branch.expires_at)
            self.neon.branching.start_delete(branch)
            reaped.append(branch.id)
        return reaped + self.neon.snapshots.expire()

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.reap_once()
            except Exception:
                log.exception("reaper failed; trying again")
