"""Snapshots of the local server's branches, as Neon's snapshot routes have them.

A snapshot is a branch's data at a moment (now, an `lsn` or a `timestamp` the history
has), kept apart from the branch: the instance data plane copies the branch's instance
(or replays it to the moment) into a stopped instance of the snapshot's own
(`InstanceDataPlane.take_snapshot`), so it outlives the branch's deletion and the
history window. The record (`state.SnapshotRecord`) keeps the branch's catalog then:
its databases, placed in that instance under physical names of their own, and its roles.

A restore makes a new branch whose instance is a fork of the snapshot's, as a create
forks a parent's (`Branching.copy`); the branch it is to replace (`target_branch_id`,
else the snapshot's source) stays as it is until a finalize, which moves that branch's
endpoints (and name, and default flag) to the restored branch and renames the old one,
as Neon's `finalizeRestoreBranch` does. `finalize_restore: true` finalizes at once.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api.api_validation import bad_request, expires_at
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.history import PointInTime
from cathouse_harness.local.control.operations import failure_reason
from cathouse_harness.local.control.state import (
    BranchRecord,
    OperationRecord,
    SnapshotRecord,
    database_id,
    iso,
    now,
    parse_time,
)
from cathouse_harness.local.sim.neon_features import preload_names
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import scrub

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore

log = get_logger("local.snapshots")

# What Neon's operation list calls the work (its actions have no snapshot of their own):
# a snapshot is a timeline kept apart, a restore a new branch, a finalize restarts computes.
TAKE_ACTION = "create_timeline"
DROP_ACTION = "delete_timeline"
RESTORE_ACTION = "create_branch"
FINALIZE_ACTION = "start_compute"
RESTORED, FINALIZED = "restored", "finalized"


def _not_found(snapshot_id: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"snapshot {snapshot_id} not found")


def snapshot_expiry(raw: str | None) -> str | None:
    """A snapshot's `expires_at`: as a branch's, without the branch's 30-day bound (the
    reference states none for snapshots)."""
    return expires_at(raw, most=None)


class Snapshots:
    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon

    def _plane(self) -> Any:
        return self.neon.dataplane

    def get(self, snapshot_id: str) -> SnapshotRecord:
        found = self.neon.state.snapshots.get(snapshot_id)
        if found is None:
            raise _not_found(snapshot_id)
        return found

    def listed(self) -> list[SnapshotRecord]:
        return sorted(self.neon.state.snapshots.values(), key=lambda s: (s.created_at, s.id), reverse=True)

    # ------------------------------------------------------------------ take

    def create(
        self,
        branch_id: str,
        *,
        name: str | None,
        at: PointInTime | None,
        expires_at: str | None,
        current_lsn: int | None = None,
    ) -> tuple[SnapshotRecord, list[OperationRecord]]:
        """A snapshot of `branch_id` now, or at the point `at` names where the history
        has it (`current_lsn` as for a branch create); its copy is made by an operation."""
        neon = self.neon
        plane = self._plane()
        branch = neon.branch(branch_id)
        if name is not None and not name.strip():
            raise bad_request("name must not be empty")
        expiry = snapshot_expiry(expires_at)
        neon.ops.check_unlocked()
        located = neon.history.locate(branch, at, current_lsn) if at is not None else None
        stamp = iso(now())
        source = located.source if located is not None else branch
        record = SnapshotRecord(
            id=ids.snapshot_id(),
            name=name or f"{branch.name} at {located.timestamp if located and located.timestamp else stamp}",
            source_branch_id=branch.id,
            created_at=stamp,
            instance=f"sn-{secrets.token_hex(8)}",
            # the point asked for (an LSN alone names no time), else now
            timestamp=located.timestamp if located is not None else stamp,
            lsn=located.lsn if located is not None else None,
            expires_at=expiry,
        )
        # the branch's catalog as it is now: the copy holds exactly these databases
        record.roles = {n: replace(r) for n, r in source.roles.items()}
        record.databases = {
            n: replace(db, id=database_id(record.id, n),
                       physical=neon.catalog.new_physical() if db.physical is not None else None)
            for n, db in source.databases.items()
        }
        placed = {db.physical: db.name for db in record.databases.values() if db.physical is not None}
        point = (located.moment, located.lsn) if located is not None and located.replay else None
        neon.state.snapshots[record.id] = record
        op = neon.ops.new(TAKE_ACTION, branch.id)
        fail = neon.faults.operation_fails()
        neon.save()

        async def take() -> None:
            try:
                neon.ops.begin(op)
                await neon.ops.preamble(fail, [op.action])
                lsn = await plane.take_snapshot(source, record.instance, placed, point)
            except Exception as exc:
                log.warning("snapshot of branch %s failed: %s", branch.id, scrub(str(exc)))
                neon.state.snapshots.pop(record.id, None)
                neon.ops.fail_all([op], failure_reason(exc, "snapshot"))
                neon.save()
                return
            record.lsn = record.lsn or lsn
            record.ready = True
            neon.ops.end(op, "finished")
            neon.save()

        neon.ops.spawn(take, f"snapshot {record.id}")
        return record, [op]

    # ------------------------------------------------------------------ change, delete

    def update(self, snapshot_id: str, changes: dict[str, Any]) -> SnapshotRecord:
        """A new `name`, and `expires_at` set (or cleared with None)."""
        record = self.get(snapshot_id)
        expiry = snapshot_expiry(changes["expires_at"]) if changes.get("expires_at") else None
        if "name" in changes:
            record.name = changes["name"]
        if "expires_at" in changes:
            record.expires_at = expiry
        self.neon.save()
        return record

    def delete(self, snapshot_id: str) -> list[OperationRecord]:
        neon = self.neon
        record = self.get(snapshot_id)
        neon.ops.check_unlocked()
        return self._start_drop(record)

    def _start_drop(self, record: SnapshotRecord) -> list[OperationRecord]:
        neon = self.neon
        neon.state.snapshots.pop(record.id, None)
        source = neon.state.branches.get(record.source_branch_id)
        op = neon.ops.new(DROP_ACTION, source.id if source is not None and not source.deleting else None)
        neon.save()

        async def drop() -> None:
            neon.ops.begin(op)
            try:
                await self._plane().drop_snapshot(record.instance, self._physicals(record))
            except Exception as exc:
                log.warning("removing snapshot %s failed: %s", record.id, scrub(str(exc)))
                neon.ops.fail_all([op], failure_reason(exc, "snapshot delete"))
            else:
                neon.ops.end(op, "finished")
            neon.save()

        neon.ops.spawn(drop, f"delete snapshot {record.id}")
        return [op]

    @staticmethod
    def _physicals(record: SnapshotRecord) -> list[str]:
        return [db.physical for db in record.databases.values() if db.physical is not None]

    def expire(self) -> list[str]:
        """Delete the snapshots whose `expires_at` has passed (the reaper's round)."""
        neon = self.neon
        if neon.ops.blocking() is not None:
            return []
        current = now()
        due = [s for s in neon.state.snapshots.values()
               if s.ready and s.expires_at and parse_time(s.expires_at) <= current]
        for record in due:
            log.info("snapshot %s (%s) expired at %s; deleting it", record.id, record.name, record.expires_at)
            self._start_drop(record)
        return [s.id for s in due]

    async def reconcile(self) -> None:
        """At start: a snapshot whose copy is gone (an in-memory home's, with its server)
        or was never finished (the server stopped while taking it) is forgotten."""
        neon = self.neon
        plane = getattr(neon.dataplane, "snapshot_kept", None)
        for record in list(neon.state.snapshots.values()):
            if plane is not None and record.ready and plane(record.instance):
                continue
            log.info("snapshot %s has no kept copy; forgetting it", record.id)
            neon.state.snapshots.pop(record.id, None)
            if plane is not None:
                await neon.dataplane.drop_snapshot(record.instance, self._physicals(record))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ restore

    def restore(
        self, snapshot_id: str, *, name: str | None, target_branch_id: str | None, finalize: bool
    ) -> tuple[BranchRecord, list[OperationRecord]]:
        """A new branch holding the snapshot's data; with `finalize`, it then replaces
        the target branch (`finalize`)."""
        neon = self.neon
        record = self.get(snapshot_id)
        plane = self._plane()
        if target_branch_id is not None:
            target: BranchRecord | None = neon.branch(target_branch_id)
        else:
            found = neon.state.branches.get(record.source_branch_id)
            target = found if found is not None and not found.deleting else None
        if finalize and target is None:
            raise bad_request(
                f"snapshot {record.id}'s branch {record.source_branch_id} no longer exists: "
                "give target_branch_id to restore onto, or restore without finalize_restore"
            )
        if len(neon.live_branches()) >= neon.branches_limit:
            raise ApiError(422, "BRANCHES_LIMIT_EXCEEDED",
                           f"the project has reached its limit of {neon.branches_limit} branches")
        neon.ops.check_unlocked()
        if not record.ready:
            raise ApiError(423, "LOCKED", f"snapshot {record.id} is still being taken; please retry later")
        stamp = iso(now())
        # a child of the branch it replaces (of its parent, when that branch has one), so
        # the replaced branch can be deleted once the restore is final
        parent_id = (target.parent_id or target.id) if target is not None else neon.state.default_branch.id
        branch = neon.branching.new_record(name, parent_id, stamp)
        branch.current_state, branch.pending_state = "init", "ready"
        branch.restored_from, branch.restore_status = record.id, RESTORED
        branch.restored_as = target.id if target is not None else None
        held = BranchRecord(
            id=record.id, name=record.name, physical="", parent_id=None,
            created_at=record.created_at, updated_at=record.created_at,
            databases=record.databases, roles=record.roles,
        )
        copies = neon.catalog.copy_for(held, branch, stamp)
        neon.state.branches[branch.id] = branch
        neon.history.begin(branch.id, None)
        ops = [neon.ops.new(RESTORE_ACTION, branch.id)]
        fail = neon.faults.operation_fails()
        neon.save()

        async def run() -> None:
            try:
                neon.ops.begin(ops[0])
                await neon.ops.preamble(fail, [ops[0].action])
                await neon.branching.copy(copies)
                kept = neon.state.preload_libraries
                if kept is not None:  # the project's setting, not the one the snapshot had
                    here = await plane.preload_libraries_here()
                    await plane.set_preload_libraries(preload_names(kept, here), branch)
            except Exception as exc:
                log.warning("restore of snapshot %s failed: %s", record.id, scrub(str(exc)))
                neon.forget_branch(branch.id)
                # a copy made before a later step failed: with no branch left, its instance goes
                await neon.branching.drop_all([copy.target for copy in copies])
                neon.ops.fail_all(ops, failure_reason(exc, "restore"))
                neon.save()
                return
            neon.history.copied(branch.id)
            neon.set_branch_state(branch, "ready")
            neon.ops.end(ops[0], "finished")
            if finalize and target is not None and not target.deleting:
                self._finalize(branch, target, None)
            neon.save()

        neon.ops.spawn(run, f"restore snapshot {record.id}")
        return branch, ops

    def finalize(self, branch_id: str, name: str | None) -> list[OperationRecord]:
        """`finalizeRestoreBranch`: the restored branch takes the place of the branch it
        was restored for (see the module)."""
        neon = self.neon
        branch = neon.branch(branch_id)
        if branch.restore_status != RESTORED or branch.restored_from is None:
            raise bad_request(
                f"branch {branch.id} is not a branch restored from a snapshot and not finalized yet: "
                "finalizing applies to a restoreSnapshot's branch made with finalize_restore false"
            )
        target = neon.state.branches.get(branch.restored_as or "")
        if target is None or target.deleting:
            raise bad_request(
                f"branch {branch.id} has no branch to replace (restored without one, or it was deleted)"
            )
        if name is not None:
            neon.branching.check_name(name, exclude=target.id)
        neon.ops.check_unlocked()
        return self._finalize(branch, target, name)

    def _finalize(
        self, branch: BranchRecord, target: BranchRecord, name: str | None
    ) -> list[OperationRecord]:
        neon = self.neon
        stamp = iso(now())
        old_name = target.name
        target.name = name or self._old_name(target, stamp)
        branch.name = old_name
        if target.default:
            target.default, branch.default = False, True
        branch.restore_status = FINALIZED
        # the URLs handed out for the replaced branch keep working, as after a restore in place
        for role_name, role in branch.roles.items():
            kept = target.roles.get(role_name)
            if kept is not None and kept.password:
                role.password = kept.password
        ops = []
        # the endpoints change places (a branch has one read-write endpoint): the replaced
        # branch's reach the restored one, any made to preview it reach the replaced one
        moving = [(ep, branch) for ep in neon.branch_endpoints(target.id)]
        moving += [(ep, target) for ep in neon.branch_endpoints(branch.id)]
        for ep, owner in moving:
            ep.branch_id = owner.id
            ep.updated_at = stamp
            # its sessions end: the next connection reaches its new branch's instance
            neon.dataplane.drop_connections(ep.id)
            op = neon.ops.new(FINALIZE_ACTION, owner.id, ep.id)
            neon.ops.end(op, "finished")
            ops.append(op)
        target.updated_at = branch.updated_at = stamp
        neon.save()
        return ops

    def _old_name(self, target: BranchRecord, stamp: str) -> str:
        base = f"{target.name}_old_{stamp.replace(':', '-')}"
        taken = {b.name for b in self.neon.live_branches()}
        candidate, number = base, 1
        while candidate in taken:
            number += 1
            candidate = f"{base}_{number}"
        return candidate

