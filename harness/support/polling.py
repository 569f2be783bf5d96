"""Waiting until something holds: one deadline, one backoff, sync and async.

Every wait in the harness for a state it cannot be told about (an operation finishing,
an endpoint starting, a process exiting, a file appearing) is the same loop: check, stop
if it holds, stop if the deadline passed, pause, pause a little longer next time. The
check runs once more when the deadline is reached, so a state reached during the last
pause is not reported as a timeout. `clock` and `sleep` are parameters so that tests
can run the loop without waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Pauses between checks: `first`, then each `growth` times the last, at most `most`."""

    first: float
    most: float | None = None
    growth: float = 1.0

    def pauses(self) -> Iterator[float]:
        pause = self.first
        ceiling = self.first if self.most is None else self.most
        while True:
            yield pause
            pause = min(ceiling, pause * self.growth)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float | None,
    backoff: Backoff,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """True once `check()` holds; False when `timeout` seconds passed first (None: never).
    An exception from `check` ends the wait."""
    until = None if timeout is None else clock() + timeout
    for pause in backoff.pauses():
        if check():
            return True
        left = _left(until, clock)
        if left is not None and left <= 0:
            return False
        sleep(pause if left is None else min(pause, left))
    raise AssertionError("unreachable: pauses() never ends")


async def wait_until_async(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float | None,
    backoff: Backoff,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """`wait_until` on an event loop; `check` may be a coroutine function."""
    until = None if timeout is None else clock() + timeout
    for pause in backoff.pauses():
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        left = _left(until, clock)
        if left is not None and left <= 0:
            return False
        await sleep(pause if left is None else min(pause, left))
    raise AssertionError("unreachable: pauses() never ends")


def _left(until: float | None, clock: Callable[[], float]) -> float | None:
    return None if until is None else until - clock()
