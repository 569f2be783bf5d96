"""Restores of the local server's branches: a branch becomes a copy of another's (or
its own) state, at its head or at a point in time the history has
(`cathouse_harness.local.control.history`), its current state kept under `preserve_under_name` when
asked (and required when it has children or is restored to its own history).

The branch keeps its endpoints and URLs: its databases are replaced in place by the
data plane, so a client reconnects to the same names; sessions on the old data end, as
on Neon. A reset starts an expiring branch's countdown again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from cathouse_harness.local.api.api_validation import Restore, bad_request
from cathouse_harness.local.control.catalog import Copy
from cathouse_harness.local.control.history import replay_later
from cathouse_harness.local.control.operations import failure_reason
from cathouse_harness.local.control.state import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    database_id,
    iso,
    now,
)
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import scrub

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore

log = get_logger("local.restoring")


@dataclass(frozen=True)
class Copied:
    """What a restore makes its branch a copy of: branch `of` at moment `at` (epoch
    seconds), named by `lsn` when the request named one."""

    of: str
    at: float
    lsn: str | None
    # the source's state at the point is replayed from its WAL (`history.Located.replay`)
    replay: bool = False


class Restoring:
    """Built by `cathouse_harness.local.control.branching.Branching`, whose names, records and copies it
    uses (through `neon.branching`)."""

    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon

    def _check_restore(self, branch: BranchRecord, source: BranchRecord, request: Restore) -> None:
        """Neon's rules for a restore source: a branch's own history needs a point and
        keeps the current state under `preserve_under_name`; a schema-only branch has no
        parent to be reset from."""
        if source.id == branch.id:
            if request.at is None:
                raise bad_request(
                    "restoring a branch to its own history needs source_lsn or source_timestamp"
                )
            if not request.preserve_under_name:
                raise bad_request(
                    f"restoring branch {branch.id} to its own history needs preserve_under_name, "
                    "the name its current state is kept under"
                )
        elif branch.parent_id is None and branch.init_source == "schema-only":
            raise bad_request(
                f"branch {branch.id} is a schema-only branch, a root branch without a parent: "
                "it can be restored only to its own history"
            )

    def restore(
        self, branch_id: str, request: Restore, current_lsn: int | None = None
    ) -> tuple[BranchRecord, list[OperationRecord]]:
        """`branch_id` becomes a copy of the source's head, or of the source at the point
        `request.at` names where the history has it (`current_lsn` as for `create`)."""
        neon = self.neon
        branch = neon.branch(branch_id)
        source = neon.branch(request.source_branch_id)
        self._check_restore(branch, source, request)
        if branch.protected:
            raise bad_request(f"branch {branch.id} is protected and cannot be reset")
        kids = neon.children(branch.id)
        if kids and not request.preserve_under_name:
            raise bad_request(f"branch {branch.id} has children: restoring it needs preserve_under_name")
        if request.preserve_under_name:
            self.neon.branching.check_name(request.preserve_under_name)
        neon.ops.check_unlocked()
        located = neon.history.locate(source, request.at, current_lsn) if request.at else None
        stamp = iso(now())
        preserved = (
            self._preserve(branch, request.preserve_under_name, stamp)
            if request.preserve_under_name
            else None
        )
        neon.set_branch_state(branch, "init", "ready")
        eps = neon.branch_endpoints(branch.id)
        ops = [neon.ops.new("create_timeline", branch.id)]
        ops += [neon.ops.new("start_compute", branch.id, ep.id) for ep in eps]
        neon.save()
        fail = neon.faults.operation_fails()
        moment = located.moment if located else neon.history.clock()
        copy = Copied(source.id, moment, located.lsn if located else None, bool(located and located.replay))
        data = located.source if located else source
        neon.ops.spawn(
            lambda: self._run_restore(branch, data, copy, preserved, eps, ops, fail), f"restore {branch.id}"
        )
        return branch, ops

    def _preserve(self, branch: BranchRecord, name: str, stamp: str) -> BranchRecord:
        """The branch as it is now, under `name`: it takes the branch's databases (no
        copy) and its children; the branch gets new copies of the source's."""
        neon = self.neon
        saved = self.neon.branching.new_record(name, branch.parent_id, stamp)
        saved.current_state, saved.pending_state = "ready", None
        # the branch keeps its passwords (its endpoints, its URLs); the saved state gets its own
        saved.roles = neon.catalog.roles_like(branch, stamp)
        saved.databases = {n: replace(db, id=database_id(saved.id, n)) for n, db in branch.databases.items()}
        for child in neon.children(branch.id):
            child.parent_id = saved.id
        neon.state.branches[saved.id] = saved
        neon.history.move(branch.id, saved.id)
        return saved

    def _restore_plan(
        self, branch: BranchRecord, source: BranchRecord, preserved: bool, stamp: str
    ) -> tuple[dict[str, DatabaseRecord], list[Copy], list[Copy], list[str]]:
        """The branch's databases after the restore, the databases replaced in place (a
        client reconnects to the same name), the new copies, and what to drop after."""
        old = {} if preserved else {n: db.physical for n, db in branch.databases.items() if db.physical}
        replace: list[Copy] = []
        copies: list[Copy] = []
        catalog: dict[str, DatabaseRecord] = {}
        for db in source.databases.values():
            physical = None
            if db.physical is not None:
                physical = old.pop(db.name, None)
                if physical is not None:
                    replace.append(Copy(physical, db.physical, db.owner_name))
                else:
                    physical = self.neon.catalog.new_physical()
                    copies.append(Copy(physical, db.physical, db.owner_name))
            catalog[db.name] = DatabaseRecord(
                database_id(branch.id, db.name), db.name, db.owner_name, stamp, stamp, physical
            )
        return catalog, replace, copies, list(old.values())

    async def _run_restore(
        self,
        branch: BranchRecord,
        source: BranchRecord,
        copy: Copied,
        preserved: BranchRecord | None,
        eps: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
    ) -> None:
        neon = self.neon
        stamp = iso(now())
        catalog, replace, copies, drop = self._restore_plan(branch, source, preserved is not None, stamp)
        if copy.replay:
            replay_later(neon.dataplane, [c.target for c in copies + replace], copy.at, copy.lsn)
        roles = neon.catalog.roles_like(source, stamp, keep=branch)
        try:
            neon.ops.begin(ops[0])
            await neon.ops.preamble(fail, [op.action for op in ops])
            made = await self.neon.branching.copy(copies)
            try:
                for target, template, owner in replace:
                    await neon.dataplane.replace_database(target, template=template, owner=owner)
            except BaseException:
                await self.neon.branching.drop_all(made)
                raise
        except Exception as exc:
            log.warning("restore of branch %s failed: %s", branch.id, scrub(str(exc)))
            neon.ops.fail_all(ops, failure_reason(exc, "restore"))
            if preserved is not None:  # give the branch its children back
                self._unpreserve(branch, preserved)
            neon.set_branch_state(branch, "ready")
            neon.save()
            return
        branch.databases, branch.roles = catalog, roles
        await self.neon.branching.drop_all(drop)
        for ep in eps:
            neon.dataplane.drop_connections(ep.id)  # sessions on the old data end, as on Neon
        neon.ops.end(ops[0], "finished")
        moment = now()
        branch.last_reset_at = iso(moment)
        if branch.ttl_interval_seconds:  # a reset starts the countdown again
            branch.expires_at = iso(moment + timedelta(seconds=branch.ttl_interval_seconds))
        neon.set_branch_state(branch, "ready")
        neon.history.begin(branch.id, copy.of, copy.at, exact=copy.replay)
        neon.history.copied(branch.id, copy.lsn)
        for op in ops[1:]:
            neon.ops.end(op, "finished")
        neon.save()

    def _unpreserve(self, branch: BranchRecord, preserved: BranchRecord) -> None:
        for child in self.neon.children(preserved.id):
            child.parent_id = branch.id
        self.neon.state.branches.pop(preserved.id, None)
        self.neon.history.move(preserved.id, branch.id)
