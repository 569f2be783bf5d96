"""When the local server's state is written: a little after a change, off the event loop.

Every operation step changes the state, often several times in one loop step (an
operation ends and the next begins); one snapshot a few milliseconds later covers all
of them. The file write (about a millisecond) happens on a writer thread, so it never
sits between a finished copy and the answer that reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cathouse_harness.local.control.state import LocalState, state_snapshot, write_private
from cathouse_harness.support.log import get_logger

log = get_logger("local.persist")

# How long a state change waits for its snapshot (~0.5 ms of the loop). Taken at once,
# it ran between a finished operation and the GET waiting for it, and between a copy's
# first query and its reply: both on every fork's path. A few milliseconds later the
# loop is idle (a copy is running in PostgreSQL, or the answer is out), and the changes
# of those milliseconds share one snapshot. `flush` still writes at once.
SAVE_DELAY = 0.004


def _report_failed_write(written: Future[None]) -> None:
    error = written.exception()
    if error is not None:
        log.error("cannot write the local server's state: %s", error)


class StateWriter:
    """Writes `state()` under `home`: `save()` soon, `flush()` now; `close()` at the end."""

    def __init__(self, home: Path, state: Callable[[], LocalState]) -> None:
        self.home = home
        self._state = state
        self._timer: asyncio.TimerHandle | None = None
        # One thread keeps the writes in order.
        self._writer: ThreadPoolExecutor | None = None

    def open(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cathouse-state")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def save(self) -> None:
        """Snapshot the state SAVE_DELAY from now (at once when no loop runs)."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(SAVE_DELAY, self._save_now)

    def flush(self) -> None:
        """Write the state now, after any write still queued."""
        self._save_now(wait=True)

    def _save_now(self, *, wait: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()  # when flush() comes first
            self._timer = None
        path, text = state_snapshot(self._state(), self.home)
        if self._writer is None:
            write_private(path, text)
            return
        written = self._writer.submit(write_private, path, text)
        if wait:
            written.result()
        else:
            written.add_done_callback(_report_failed_write)
