"""cathouse_harness.support.polling: the one wait-until loop, on a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio

import pytest
from cathouse_harness.support.polling import Backoff, wait_until, wait_until_async


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_backoff_grows_to_its_ceiling() -> None:
    pauses = Backoff(0.1, most=0.5, growth=2.0).pauses()
    assert [round(next(pauses), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_without_growth_is_constant() -> None:
    pauses = Backoff(0.02).pauses()
    assert [next(pauses) for _ in range(3)] == [0.02, 0.02, 0.02]


def test_returns_as_soon_as_the_check_holds() -> None:
    t = FakeTime()
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), timeout=10, backoff=Backoff(1.0),
                      clock=t.clock, sleep=t.sleep)
    assert t.pauses == [1.0, 1.0]


def test_times_out_with_a_last_check_at_the_deadline() -> None:
    t = FakeTime()
    checked_at: list[float] = []

    def check() -> bool:
        checked_at.append(t.now)
        return False

    assert not wait_until(check, timeout=2.5, backoff=Backoff(1.0), clock=t.clock, sleep=t.sleep)
    # the last pause is cut to the deadline, and the check runs once more there
    assert t.pauses == [1.0, 1.0, 0.5]
    assert checked_at[-1] == 102.5


def test_no_timeout_waits_until_it_holds() -> None:
    t = FakeTime()
    answers = iter([False] * 50 + [True])
    assert wait_until(lambda: next(answers), timeout=None, backoff=Backoff(0.1, most=1.0, growth=2),
                      clock=t.clock, sleep=t.sleep)
    assert len(t.pauses) == 50 and max(t.pauses) == 1.0


def test_an_exception_from_the_check_ends_the_wait() -> None:
    def check() -> bool:
        raise RuntimeError("process exited")

    with pytest.raises(RuntimeError, match="process exited"):
        wait_until(check, timeout=5, backoff=Backoff(1.0))


def test_async_takes_coroutine_and_plain_checks() -> None:
    t = FakeTime()
    answers = iter([False, True])

    async def probe() -> bool:
        return next(answers)

    async def main() -> tuple[bool, bool]:
        first = await wait_until_async(probe, timeout=5, backoff=Backoff(0.5),
                                       clock=t.clock, sleep=t.asleep)
        second = await wait_until_async(lambda: False, timeout=1, backoff=Backoff(0.5),
                                        clock=t.clock, sleep=t.asleep)
        return first, second

    assert asyncio.run(main()) == (True, False)
    assert t.pauses == [0.5, 0.5, 0.5]
