"""Neon's operations: reading them and waiting until they settle."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from urllib.parse import unquote

from cathouse_harness.errors import HarnessError, NeonAPIError
from cathouse_harness.neon.base import ClientBase, items, obj, q
from cathouse_harness.neon.models import Operation
from cathouse_harness.support.polling import Backoff, wait_until_async

# Polling starts fast so a local server is not slowed down (a branch copy there is
# quicker than a first pause of Neon's scale), then backs off; on Neon this costs a few
# extra GETs per create.
POLL = Backoff(0.005, most=0.5, growth=1.5)


class NeonOperationError(NeonAPIError):
    """A Neon operation ended failed/error/cancelled, or did not finish in time.

    A `NeonAPIError` (catch that); `operation` is the last state seen.
    """

    def __init__(self, operation: Operation, *, timeout: float | None = None) -> None:
        self.operation = operation
        self.timed_out = timeout is not None
        where = f" on branch {operation.branch_id}" if operation.branch_id else ""
        what = (
            f"Neon operation {operation.id} ({operation.action or 'unknown action'}){where}"
            f" in project {operation.project_id}"
        )
        if timeout is not None:
            text = f"{what} still {operation.status or 'pending'} after {timeout:g}s"
        else:
            reason = f": {operation.error}" if operation.error else ""
            text = f"{what} ended {operation.status}{reason}"
        # Not NeonAPIError.__init__: its "HTTP <status>" framing describes an HTTP answer,
        # and the HTTP answers here were all fine.
        HarnessError.__init__(self, text)
        self.status = 0
        self.code = "OPERATION_TIMEOUT" if self.timed_out else "OPERATION_FAILED"
        self.request_id = None
        self.method = None
        self.path = None

    @property
    def transient(self) -> bool:
        return self.timed_out


class OperationsMixin(ClientBase):
    async def get_operation(self, project_id: str, operation_id: str) -> Operation:
        data = await self._transport.get(f"/projects/{q(project_id)}/operations/{q(operation_id)}")
        return Operation.from_api(obj(data, "operation"))

    async def list_operations(self, project_id: str) -> list[Operation]:
        """The project's recent operations (Neon's first page, newest first)."""
        data = await self._transport.get(f"/projects/{q(project_id)}/operations")
        return [Operation.from_api(o) for o in items(data, "operations")]

    async def wait_for_operations(
        self,
        project_id: str,
        operations: Iterable[Operation | str],
        *,
        timeout: float = 120,
    ) -> list[Operation]:
        """Poll until every operation settled; their final states in the order given.

        Raises NeonOperationError (a NeonAPIError) naming the operation, its action and
        branch as soon as one fails, or when `timeout` seconds pass first.
        """
        order: list[str] = []
        latest: dict[str, Operation] = {}
        for item in operations:
            op_id = item.id if isinstance(item, Operation) else str(item)
            if op_id in latest or op_id in order:
                continue
            order.append(op_id)
            if isinstance(item, Operation):
                latest[op_id] = item
                if item.failed:
                    raise NeonOperationError(item)
        pending = [i for i in order if i not in latest or latest[i].pending]

        async def settled() -> bool:
            # A mutation's operations run one after another, so a round asks only for the
            # first unfinished one and moves on at once when it is done: one request per
            # pause instead of one per operation, which matters most while the server is
            # busy doing the work being waited for.
            while pending:
                op = await self.get_operation(project_id, pending[0])
                latest[pending[0]] = op
                if op.failed:
                    raise NeonOperationError(op)
                if op.pending:
                    return False
                pending.pop(0)
            return True

        if pending and not await wait_until_async(
            settled, timeout=timeout, backoff=POLL, clock=self._clock, sleep=self._sleep
        ):
            raise NeonOperationError(latest[pending[0]], timeout=timeout)
        return [latest[i] for i in order]

    async def _wait_for_project(self, path: str, deadline_at: float) -> bool:
        """After a 423 (the project has running operations): wait for those operations,
        as Neon's guidance has clients poll them, so the next attempt goes out as the lock
        clears rather than after a blind backoff. False when none is seen running (a
        lock on something else, or a 423 from a proxy): the caller backs off instead.

        Not counted against `max_attempts`: each such wait sees an operation end, and
        the deadline still bounds the whole request."""
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "projects" or deadline_at - self._clock() <= 0:
            return False
        project_id = unquote(parts[2])
        try:
            # Running operations are the newest; one short page finds them.
            data = await self._transport.get(
                f"/projects/{q(project_id)}/operations", params={"limit": "20"}, deadline_at=deadline_at
            )
        except NeonAPIError:
            return False
        running = [op for op in map(Operation.from_api, items(data, "operations")) if op.pending]
        if not running:
            return False
        self.stats.lock_waits += 1
        with contextlib.suppress(NeonAPIError):  # another's operation failed, or time ran out
            await self.wait_for_operations(
                project_id, running, timeout=max(deadline_at - self._clock(), 0.001)
            )
        return True
