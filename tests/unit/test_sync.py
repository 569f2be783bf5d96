"""cathouse_harness.support.sync.run_sync: the one bridge from synchronous code to the async engine."""

from __future__ import annotations

import asyncio
import threading

import pytest
from cathouse_harness.support.sync import run_sync


def test_returns_the_result_and_runs_on_its_own_thread() -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert run_sync(where(), name="bridge-test") == "bridge-test"
    assert not any(t.name == "bridge-test" for t in threading.enumerate())  # closed after


def test_raises_the_coroutine_s_exception() -> None:
    async def fails() -> None:
        raise LookupError("no such branch")

    with pytest.raises(LookupError, match="no such branch"):
        run_sync(fails())


def test_works_where_the_caller_already_runs_an_event_loop() -> None:
    """A test (pytest-asyncio, anyio) calling the CLI or doctor: asyncio.run refuses
    there; the bridge does not borrow the caller's loop."""

    async def answer() -> int:
        return 42

    async def caller() -> int:
        return run_sync(answer())

    assert asyncio.run(caller()) == 42
