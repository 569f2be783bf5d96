"""Running the async engine from synchronous callers.

The pytest plugin and the CLI are synchronous, and a test may already own an event loop
(pytest-asyncio, anyio). The harness therefore keeps its own loop on a private daemon
thread: the Neon client's connections live there for the whole run, and no caller's loop
is ever borrowed or blocked by ours. `run_sync` is the same bridge for one coroutine (the
CLI's commands, doctor's probe, the watchdog's cleanup): a loop thread for the call, closed
after it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop on a daemon thread; `run(coro)` waits for the result from any thread."""

    def __init__(self, name: str = "cathouse-harness-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            # A KeyboardInterrupt in the waiting thread must not leave the coroutine running
            # half-way through an API mutation without anyone knowing.
            future.cancel()
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(_drain(), self._loop).result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def run_sync(coro: Coroutine[Any, Any, T], *, name: str = "cathouse-harness-call") -> T:
    """Run `coro` to completion from synchronous code and return its result (or raise its
    exception). Works whether or not the calling thread already runs an event loop."""
    loop = LoopThread(name)
    try:
        return loop.run(coro)
    finally:
        loop.close()
