"""Endpoints (Neon's computes) of the local server: create, update, delete, start,
suspend, restart.

An endpoint here is a pair of listeners in front of the branch's databases; there is no
compute to boot, so its operations finish at once. What the states mean for a client is
kept: a suspended (`idle`) endpoint has its connections ended and wakes on the next
one, a restart ends them too, a disabled endpoint refuses connections, a `read_only`
endpoint's sessions cannot write (`default_transaction_read_only`), a branch has at
most one `read_write` endpoint, and a protected branch's endpoints cannot be deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api.api_validation import EndpointCreate, EndpointSettings, EndpointUpdate
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.state import EndpointRecord, OperationRecord, iso, now

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore


def _apply_settings(ep: EndpointRecord, settings: EndpointSettings) -> None:
    if settings.suspend_timeout_seconds is not None:
        ep.suspend_timeout_seconds = settings.suspend_timeout_seconds
    if settings.autoscaling_limit_min_cu is not None:
        ep.autoscaling_limit_min_cu = settings.autoscaling_limit_min_cu
    if settings.autoscaling_limit_max_cu is not None:
        ep.autoscaling_limit_max_cu = settings.autoscaling_limit_max_cu
    if ep.autoscaling_limit_min_cu > ep.autoscaling_limit_max_cu:
        raise ApiError(
            400, "BAD_REQUEST", "autoscaling_limit_min_cu must not exceed autoscaling_limit_max_cu"
        )
    if settings.disabled is not None:
        ep.disabled = settings.disabled


class Computes:
    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon

    def _has_read_write(self, branch_id: str, besides: str | None = None) -> bool:
        return any(
            ep.type == "read_write" and ep.id != besides for ep in self.neon.branch_endpoints(branch_id)
        )

    def _set_state(self, ep: EndpointRecord, current: str) -> None:
        stamp = iso(now())
        ep.current_state, ep.pending_state, ep.updated_at = current, None, stamp
        if current == "active":
            ep.started_at = stamp
        else:
            ep.suspended_at = stamp

    async def create(self, request: EndpointCreate) -> tuple[EndpointRecord, list[OperationRecord]]:
        neon = self.neon
        branch = neon.branch(request.branch_id)
        kind = request.settings.type or "read_write"
        if kind == "read_write" and self._has_read_write(branch.id):
            raise ApiError(409, "CONFLICT", f"branch {branch.id} already has a read_write endpoint")
        neon.ops.check_unlocked()
        stamp = iso(now())
        ep = EndpointRecord(
            id=ids.endpoint_id(), branch_id=branch.id, created_at=stamp, updated_at=stamp, type=kind
        )
        _apply_settings(ep, request.settings)
        neon.state.endpoints[ep.id] = ep
        try:
            await neon.open_endpoint(ep)  # the answer carries its ports
        except BaseException:
            del neon.state.endpoints[ep.id]
            raise
        return ep, self._run(ep, ["start_compute"], "active", f"create endpoint {ep.id}")

    def _run(self, ep: EndpointRecord, actions: list[str], final: str, name: str) -> list[OperationRecord]:
        neon = self.neon
        ops = [neon.ops.new(action, ep.branch_id, ep.id) for action in actions]
        ep.pending_state = final

        async def work() -> None:
            if final == "idle" or "suspend_compute" in actions:
                neon.dataplane.drop_connections(ep.id)
            self._set_state(ep, final)

        neon.ops.run_quick(ops, work, name)
        neon.save()
        return ops

    def update(
        self, endpoint_id: str, request: EndpointUpdate
    ) -> tuple[EndpointRecord, list[OperationRecord]]:
        neon = self.neon
        ep = neon.endpoint(endpoint_id)
        if request.branch_id and request.branch_id != ep.branch_id:
            target = neon.branch(request.branch_id)
            if ep.type == "read_write" and self._has_read_write(target.id, besides=ep.id):
                raise ApiError(409, "CONFLICT", f"branch {target.id} already has a read_write endpoint")
        neon.ops.check_unlocked()
        _apply_settings(ep, request.settings)
        if request.branch_id:
            ep.branch_id = request.branch_id
        ep.updated_at = iso(now())
        # New settings reach a compute by a restart; its connections end.
        final = "idle" if ep.disabled else "active"
        return ep, self._run(ep, ["apply_config", "suspend_compute"], final, f"update endpoint {ep.id}")

    def delete(self, endpoint_id: str) -> tuple[EndpointRecord, list[OperationRecord]] | None:
        neon = self.neon
        ep = neon.state.endpoints.get(endpoint_id)
        if ep is None or neon.state.branches[ep.branch_id].deleting:
            return None
        if neon.branch(ep.branch_id).protected:
            raise ApiError(
                400, "BAD_REQUEST", f"endpoint {ep.id} belongs to a protected branch and cannot be deleted"
            )
        neon.ops.check_unlocked()
        ops = [neon.ops.new("suspend_compute", ep.branch_id, ep.id)]
        del neon.state.endpoints[ep.id]

        async def close() -> None:
            await neon.close_endpoint(ep)

        neon.ops.run_quick(ops, close, f"delete endpoint {ep.id}")
        neon.save()
        return ep, ops

    def start(self, endpoint_id: str) -> tuple[EndpointRecord, list[OperationRecord]]:
        return self._change(endpoint_id, ["start_compute"], "active")

    def suspend(self, endpoint_id: str) -> tuple[EndpointRecord, list[OperationRecord]]:
        return self._change(endpoint_id, ["suspend_compute"], "idle")

    def restart(self, endpoint_id: str) -> tuple[EndpointRecord, list[OperationRecord]]:
        return self._change(endpoint_id, ["suspend_compute", "start_compute"], "active")

    def _change(
        self, endpoint_id: str, actions: list[str], final: str
    ) -> tuple[EndpointRecord, list[OperationRecord]]:
        ep = self.neon.endpoint(endpoint_id)
        if ep.disabled and final == "active":
            raise ApiError(400, "BAD_REQUEST", f"endpoint {ep.id} is disabled")
        self.neon.ops.check_unlocked()
        return ep, self._run(ep, actions, final, f"{actions[-1]} {ep.id}")
