"""Blocking work that another thread can ask to stop: today a migration's statement.

Ctrl-C reaches Python's main thread only. A migration runs in a thread of its own and
PostgreSQL keeps executing its statement (a `pg_sleep`, a long index build) whatever
that thread's caller does, so the run would wait for the statement before it could
delete the half-migrated branch and exit. Work that can be cancelled registers how
(`stoppable`); whoever gives up on it (the session's Ctrl-C, the xdist broker's end of
run) calls `stop_all`, which asks every one until it has finished.

Once interrupted, a process should also be gone fast (`exit_quickly`).
"""

from __future__ import annotations

import atexit
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cathouse_harness.support.log import get_logger

log = get_logger("interrupt")

_lock = threading.Lock()
_live: dict[int, Callable[[], None]] = {}
_ids = itertools.count()

# between two requests to the same work: a request that arrives between two statements
# cancels nothing, so it is made again until the work has ended
_AGAIN = 0.05


@contextmanager
def stoppable(cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs, `stop_all` may call `cancel` (from another thread)."""
    key = next(_ids)
    with _lock:
        _live[key] = cancel
    try:
        yield
    finally:
        with _lock:
            _live.pop(key, None)


def running() -> int:
    with _lock:
        return len(_live)


def stop_all(wait: float = 2.0) -> int:
    """Ask every registered work to stop, again and again, until none is left or `wait`
    seconds passed; how many were asked."""
    asked: set[int] = set()
    deadline = time.monotonic() + wait
    while True:
        with _lock:
            live = list(_live.items())
        if not live:
            break
        for key, cancel in live:
            asked.add(key)
            try:
                cancel()
            except Exception as exc:  # finished meanwhile, or its server is gone
                log.debug("could not cancel: %s", exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(_AGAIN)
    return len(asked)


_quick_exit = False


def exit_quickly() -> None:
    """Let this process's interpreter exit skip the cyclic collector's last pass.

    A pytest process with the harness, SQLAlchemy, Alembic and the drivers imported
    spends 0.3-0.6 s (more on a busy machine) in that pass after its last line has run;
    the xdist controller waits for each worker's, then pays its own. `gc.freeze` at exit
    hides every object from it; atexit handlers registered before this one (logging's
    flush, execnet's, tempfile's) still run after it, and the memory goes with the
    process. Only after Ctrl-C: an ordinary end keeps the collector's last pass, which
    reports what a test left unclosed (ResourceWarning) and runs its finalizers.
    """
    global _quick_exit
    if not _quick_exit:
        _quick_exit = True
        atexit.register(gc.freeze)
