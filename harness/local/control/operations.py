"""Operations of the local Neon server: their records, state machine, lock and tasks.

A mutation is checked and recorded synchronously (the server runs on one event loop and
nothing awaits between check and record, so two requests never race), answered at once
with `scheduling` operations, and carried out by a background task that moves them to
`running` and `finished` (or `failed`).

The lock is the project's, as on Neon: while any operation of the project is unfinished,
a mutation answers 423 and the client tries again (`check_unlocked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cathouse_harness.errors import ApiError
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.state import LocalState, OperationRecord, iso, now, parse_time
from cathouse_harness.local.sim.faults import FaultInjector
from cathouse_harness.local.sim.latency import NO_LATENCY, LatencyProfile
from cathouse_harness.support.log import get_logger

log = get_logger("local.operations")


class InjectedFailure(Exception):
    """An operation made to fail by fault injection; it has no effect."""


def wake(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def failure_reason(exc: Exception, what: str) -> str:
    """The operation's `error` text: an injected failure says so, others name the class
    (the exception's own text may hold a path or a password)."""
    return str(exc) if isinstance(exc, InjectedFailure) else f"{what} failed: {exc.__class__.__name__}"


class Operations:
    """The project's operations: records, their transitions, waiters, background tasks."""

    def __init__(
        self,
        state: Callable[[], LocalState],
        save: Callable[[], None],
        faults: FaultInjector,
        latency: LatencyProfile = NO_LATENCY,
    ) -> None:
        self._state = state
        self._save = save
        self.faults = faults
        self.latency = latency
        self._tasks: set[asyncio.Task[None]] = set()
        # GETs waiting for an operation to settle (see wait_settled), by operation id.
        self._settled: dict[str, list[asyncio.Future[None]]] = {}
        # The unfinished operations this server started (the lock asks on every
        # mutation; the state keeps up to 2000 operations). Ones loaded from a state
        # file are ended at start, by `end`.
        self._unfinished: dict[str, OperationRecord] = {}

    # ------------------------------------------------------------------ records

    def get(self, op_id: str) -> OperationRecord:
        found = self._state().operations.get(op_id)
        if found is None:
            raise ApiError(404, "NOT_FOUND", f"operation {op_id} not found")
        return found

    def new(self, action: str, branch_id: str | None, endpoint_id: str | None = None) -> OperationRecord:
        stamp = iso(now())
        op = OperationRecord(
            id=ids.operation_id(),
            action=action,
            branch_id=branch_id,
            endpoint_id=endpoint_id,
            created_at=stamp,
            updated_at=stamp,
            started=time.time(),
        )
        self._state().operations[op.id] = op
        self._unfinished[op.id] = op
        return op

    def begin(self, op: OperationRecord) -> None:
        op.status = "running"
        op.updated_at = iso(now())
        self._save()

    def end(self, op: OperationRecord, status: str, error: str | None = None) -> None:
        moment = now()
        op.status = status
        op.error = error
        op.updated_at = iso(moment)
        if status == "failed":
            op.failures_count += 1
        started = op.started or parse_time(op.created_at).timestamp()
        op.total_duration_ms = max(0, int((moment.timestamp() - started) * 1000))
        if not op.unfinished:
            self._unfinished.pop(op.id, None)
        for waiter in self._settled.pop(op.id, ()):
            wake(waiter)  # waiters run after this step, so they see the work that follows

    def fail_all(self, ops: list[OperationRecord], reason: str) -> None:
        for op in ops:
            if op.unfinished:
                self.end(op, "failed", reason)

    def forget(self, ops: list[OperationRecord]) -> None:
        for op in ops:
            self._state().operations.pop(op.id, None)
            self._unfinished.pop(op.id, None)

    # ------------------------------------------------------------------ the lock

    def blocking(self) -> OperationRecord | None:
        """The oldest unfinished operation of the project, if any."""
        return next(iter(self._unfinished.values()), None)

    def check_unlocked(self) -> None:
        """423 while the project has running operations, as Neon answers."""
        blocking = self.blocking()
        if blocking is not None:
            raise ApiError(
                423,
                "LOCKED",
                "project already has running conflicting operations, "
                f"blocking operation id: {blocking.id}; please retry later",
            )

    # ------------------------------------------------------------------ waiting

    async def wait_settled(self, op: OperationRecord, timeout: float) -> None:
        """Wait up to `timeout` seconds for a scheduled or running operation to settle.

        Lets a GET of an operation answer the moment it finishes instead of the client
        sleeping between polls; the answer may still say `running`, as Neon's may."""
        if not op.unfinished or timeout <= 0:
            return
        # A bare future, not Event + wait_for (which runs event.wait() as a task of its
        # own): the GET resumes in the very next loop step after the operation ends. One
        # future per waiter, because a GET cancelled (client gone) cancels what it awaits.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._settled.setdefault(op.id, [])
        waiters.append(waiter)
        timer = loop.call_later(timeout, wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._settled.get(op.id) is waiters:
                del self._settled[op.id]

    # ------------------------------------------------------------------ tasks

    def spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the server alive; the operation is already marked
                log.exception("background operation %s crashed", name)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def preamble(self, fail: bool, actions: list[str] | None = None) -> None:
        """Delay and injected failure, before an operation does any work: the fault's
        `op_delay`, then what the latency profile gives `actions` (all `running` by now)."""
        delay = self.faults.config.op_delay
        if delay:
            await asyncio.sleep(delay)
        await self.latency.operation(actions or [])
        if fail:
            raise InjectedFailure("operation failed (injected fault)")

    def run_quick(self, ops: list[OperationRecord], work: Callable[[], Awaitable[None]], name: str) -> None:
        """Carry out a small mutation's operations in the background: each runs, then
        `work`, then all finish (or all fail, with nothing changed by a failed `work`)."""
        fail = self.faults.operation_fails()

        async def run() -> None:
            for op in ops:
                self.begin(op)
            try:
                await self.preamble(fail, [op.action for op in ops])
                await work()
            except Exception as exc:
                log.warning("%s failed: %s", name, exc.__class__.__name__)
                self.fail_all(ops, failure_reason(exc, name))
            else:
                for op in ops:
                    self.end(op, "finished")
            self._save()

        self.spawn(run, name)
