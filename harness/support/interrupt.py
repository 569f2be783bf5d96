"""Blocking work that another thread can ask to stop: today a migration's statement.

Ctrl-C reaches Python's main thread only. A migration runs in a thread of its own and
PostgreSQL keeps executing its statement (a `pg_sleep`, a long index build) whatever
that thread's caller does, so the run would wait for the statement before it could
delete the half-migrated branch and exit. Work that can be cancelled registers how
(`stoppable`); whoever gives up on it (the session's Ctrl-C, the xdist broker's end of
run) calls `stop_all`, which asks every one until it has finished.
"""

from __future__ import annotations

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
