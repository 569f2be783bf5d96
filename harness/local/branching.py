"""Branches of the local server: create, update, delete, restore, set as default.

A child's databases are copies of its parent's (`CREATE DATABASE … TEMPLATE`, fenced by
the data plane), made by the create's background operation. The rules are Neon's: a
branch name is unique; no `expires_at` on the default or a protected branch, on a
branch with children, or as the parent of a new branch; the default, a root and a
protected branch cannot be deleted, nor a branch with children; a protected branch
cannot be reset; a branch with children is restored only with `preserve_under_name`;
a reset starts an expiring branch's countdown again; creates stop at the branch limit
`/users/me` advertises.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from harness.errors import ApiError
from harness.local import ids
from harness.local.api_validation import BranchCreate, BranchUpdate, Restore, _Unset
from harness.local.catalog import Copy
from harness.local.operations import failure_reason, wake
from harness.local.state import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    database_id,
    iso,
    now,
    parse_time,
)
from harness.log import get_logger
from harness.redact import scrub

if TYPE_CHECKING:
    from harness.local.core import NeonCore

log = get_logger("local.branching")

# At most this long a create's answer waits for its copy to be sent to PostgreSQL.
COPY_ISSUE_WAIT = 0.05


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def _ttl(expires_at: str | None, stamp: str) -> int | None:
    """`ttl_interval_seconds`: from the change at `stamp` to the expiry, in whole seconds
    as both are written."""
    if expires_at is None:
        return None
    return max(1, int((parse_time(expires_at) - parse_time(stamp)).total_seconds()))


class Branching:
    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon

    def _check_name(self, name: str, *, exclude: str | None = None) -> str:
        for other in self.neon.live_branches():
            if other.name == name and other.id != exclude:
                raise ApiError(409, "CONFLICT", f"branch with name {name!r} already exists")
        return name

    def _new_record(self, name: str | None, parent_id: str | None, stamp: str) -> BranchRecord:
        branch_id = ids.branch_id()
        return BranchRecord(
            id=branch_id,
            name=self._check_name(name or branch_id),
            physical=ids.physical_name(branch_id),
            parent_id=parent_id,
            created_at=stamp,
            updated_at=stamp,
            state_changed_at=stamp,
            parent_timestamp=stamp if parent_id else None,
        )

    # ------------------------------------------------------------------ create

    async def create(
        self, request: BranchCreate
    ) -> tuple[BranchRecord, list[EndpointRecord], list[OperationRecord]]:
        neon = self.neon
        state = neon.state
        parent = neon.branch(request.parent_id) if request.parent_id else state.default_branch
        if parent.expires_at:
            raise bad_request(
                f"branch {parent.id} expires: a branch with an expiration time cannot have children"
            )
        if request.protected and request.expires_at:
            raise bad_request("a protected branch cannot have an expiration time")
        if len(neon.live_branches()) >= neon.branches_limit:
            raise ApiError(
                422,
                "BRANCHES_LIMIT_EXCEEDED",
                f"the project has reached its limit of {neon.branches_limit} branches",
            )
        neon.ops.check_unlocked()
        stamp = iso(now())
        branch = self._new_record(request.name, parent.id, stamp)
        branch.expires_at, branch.ttl_interval_seconds = request.expires_at, _ttl(request.expires_at, stamp)
        branch.protected, branch.init_source = request.protected, request.init_source
        if request.annotation is not None:
            branch.annotation = request.annotation
            branch.annotation_created_at = branch.annotation_updated_at = stamp
        copies = neon.catalog.copy_for(parent, branch, stamp)
        state.branches[branch.id] = branch
        ops = [neon.ops.new("create_branch", branch.id)]
        endpoints: list[EndpointRecord] = []
        for spec in request.endpoints:
            ep = EndpointRecord(
                id=ids.endpoint_id(),
                branch_id=branch.id,
                created_at=stamp,
                updated_at=stamp,
                type=spec.type or "read_write",
            )
            state.endpoints[ep.id] = ep
            endpoints.append(ep)
            ops.append(neon.ops.new("start_compute", branch.id, ep.id))
        fail = neon.faults.operation_fails()
        # The copy starts first: PostgreSQL works on it while the listeners open and this
        # answer is built. It completes only once `opened` says how opening went.
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[bool] = loop.create_future()
        issued: asyncio.Future[None] = loop.create_future()
        neon.ops.spawn(
            lambda: self._run_create(branch, copies, endpoints, ops, fail, opened, issued),
            f"create {branch.id}",
        )
        # Until the first CREATE DATABASE itself is sent (bounded: an injected delay or a
        # busy template must not hold the answer): the copy's idle check then has the loop
        # to itself, and the listeners and the answer are made while PostgreSQL copies.
        await asyncio.wait({issued}, timeout=COPY_ISSUE_WAIT)
        try:
            # Listeners open now so the answer carries their ports; connections made
            # before the copy ends find no database, as on a compute still starting.
            for ep in endpoints:
                await neon.open_endpoint(ep)
        except BaseException:
            opened.set_result(False)
            neon.forget_branch(branch.id)
            neon.ops.forget(ops)
            raise
        opened.set_result(True)
        neon.save()
        return branch, endpoints, ops

    async def _copy(
        self, copies: list[Copy], issued: asyncio.Future[None] | None = None, *, schema_only: bool = False
    ) -> list[str]:
        """Make `copies` one after another; the databases made. On a failure, what was
        made is dropped again before the error goes on."""
        made: list[str] = []
        try:
            for target, template, owner in copies:
                await self.neon.dataplane.create_database(
                    target,
                    owner=owner,
                    template=template,
                    schema_only=schema_only,
                    issued=(lambda: wake(issued)) if issued is not None and not made else None,
                )
                made.append(target)
        except BaseException:
            await self._drop_all(made)
            raise
        return made

    async def _drop_all(self, physicals: list[str]) -> None:
        for physical in physicals:
            with contextlib.suppress(Exception):
                if physical in await self.neon.dataplane.list_databases():
                    await self.neon.dataplane.drop_database(physical)

    async def _run_create(
        self,
        branch: BranchRecord,
        copies: list[Copy],
        endpoints: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
        opened: asyncio.Future[bool],
        issued: asyncio.Future[None],
    ) -> None:
        neon = self.neon
        op_branch, op_computes = ops[0], ops[1:]
        try:
            neon.ops.begin(op_branch)
            await neon.ops.preamble(fail)
            if not copies:
                wake(issued)
            made = await self._copy(copies, issued, schema_only=branch.init_source == "schema-only")
        except Exception as exc:
            wake(issued)  # the create's answer waits for this, and this for its answer
            if await opened:
                await self._abandon_create(branch, endpoints, ops, exc)
            return
        if not await opened:
            # The create was refused after all (no listener): nobody ever saw these copies.
            await self._drop_all(made)
            return
        # Neon's create time is waited after the copy, not before: the answer waits for
        # the copy to be issued (COPY_ISSUE_WAIT), and the child is the parent as of the
        # create, as on Neon.
        await neon.ops.latency.operation([op_branch.action])
        neon.ops.end(op_branch, "finished")
        neon.set_branch_state(branch, "ready")
        neon.save()
        for op, ep in zip(op_computes, endpoints, strict=True):
            neon.ops.begin(op)
            try:
                await neon.ops.preamble(False, [op.action])
            finally:
                ep.current_state, ep.pending_state = "active", None
                ep.updated_at = ep.started_at = iso(now())
                neon.ops.end(op, "finished")
                neon.save()

    async def _abandon_create(
        self,
        branch: BranchRecord,
        endpoints: list[EndpointRecord],
        ops: list[OperationRecord],
        exc: Exception,
    ) -> None:
        neon = self.neon
        log.warning("create of branch %s failed: %s", branch.id, scrub(str(exc)))
        for ep in endpoints:
            with contextlib.suppress(Exception):
                await neon.close_endpoint(ep)
        neon.forget_branch(branch.id)
        neon.ops.fail_all(ops, failure_reason(exc, "copy"))
        neon.save()

    # ------------------------------------------------------------------ update

    def update(self, branch_id: str, request: BranchUpdate) -> BranchRecord:
        neon = self.neon
        branch = neon.branch(branch_id)
        name = self._check_name(request.name, exclude=branch.id) if request.name is not None else None
        protected = branch.protected if request.protected is None else request.protected
        changed = not isinstance(request.expires_at, _Unset)
        expires_at = request.expires_at if not isinstance(request.expires_at, _Unset) else branch.expires_at
        if expires_at is not None:
            if branch.default:
                raise bad_request("the default branch cannot have an expiration time")
            if protected:
                raise bad_request("a protected branch cannot have an expiration time")
            if changed and neon.children(branch.id):
                raise bad_request(f"branch {branch.id} has children: it cannot have an expiration time")
        neon.ops.check_unlocked()
        if name is not None:
            branch.name = name
        branch.protected = protected
        branch.updated_at = iso(now())
        if changed:
            branch.expires_at = expires_at
            branch.ttl_interval_seconds = _ttl(expires_at, branch.updated_at)
        neon.save()
        return branch

    def set_default(self, branch_id: str) -> BranchRecord:
        neon = self.neon
        branch = neon.branch(branch_id)
        if branch.expires_at:
            raise bad_request(f"branch {branch.id} expires: an expiring branch cannot be the default")
        neon.ops.check_unlocked()
        stamp = iso(now())
        for other in neon.state.branches.values():
            if other.default and other is not branch:
                other.default, other.updated_at = False, stamp
        branch.default, branch.updated_at = True, stamp
        neon.save()
        return branch

    # ------------------------------------------------------------------ delete

    def delete(self, branch_id: str) -> tuple[BranchRecord, list[OperationRecord]] | None:
        """None when there is no such branch (Neon answers 204)."""
        neon = self.neon
        branch = neon.state.branches.get(branch_id)
        if branch is None or branch.deleting:
            return None
        if branch.default:
            raise bad_request(f"branch {branch.id} is the default branch and cannot be deleted")
        if branch.parent_id is None:
            raise bad_request(f"branch {branch.id} is a root branch and cannot be deleted")
        if branch.protected:
            raise bad_request(f"branch {branch.id} is protected and cannot be deleted")
        kids = neon.children(branch.id)
        if kids:
            raise ApiError(
                422,
                "BRANCH_HAS_CHILDREN",
                f"branch {branch.id} has {len(kids)} child branch(es), e.g. {kids[0].id}; delete them first",
            )
        neon.ops.check_unlocked()
        return branch, self.start_delete(branch)

    def start_delete(self, branch: BranchRecord) -> list[OperationRecord]:
        neon = self.neon
        branch.deleting = True
        branch.pending_state = "deleted"
        eps = neon.branch_endpoints(branch.id)
        ops = [neon.ops.new("suspend_compute", branch.id, ep.id) for ep in eps]
        ops.append(neon.ops.new("delete_timeline", branch.id))
        neon.save()
        fail = neon.faults.operation_fails()
        neon.ops.spawn(lambda: self._run_delete(branch, eps, ops, fail), f"delete {branch.id}")
        return ops

    async def _run_delete(
        self, branch: BranchRecord, eps: list[EndpointRecord], ops: list[OperationRecord], fail: bool
    ) -> None:
        neon = self.neon
        closed: list[EndpointRecord] = []
        try:
            for op in ops:
                neon.ops.begin(op)
            await neon.ops.preamble(fail, [op.action for op in ops])
            for ep, op in zip(eps, ops, strict=False):
                closed.append(ep)
                await neon.close_endpoint(ep)
                neon.ops.end(op, "finished")
            for db in branch.databases.values():
                if db.physical is not None:
                    await neon.dataplane.drop_database(db.physical)
        except Exception as exc:
            log.warning("delete of branch %s failed: %s", branch.id, scrub(str(exc)))
            branch.deleting = False
            branch.pending_state = None
            for ep in closed:
                with contextlib.suppress(Exception):
                    await neon.open_endpoint(ep, reuse_ports=True)
            neon.ops.fail_all(ops, failure_reason(exc, "delete"))
            neon.save()
            return
        neon.forget_branch(branch.id)
        neon.ops.end(ops[-1], "finished")
        neon.save()

    # ------------------------------------------------------------------ restore

    def restore(self, branch_id: str, request: Restore) -> tuple[BranchRecord, list[OperationRecord]]:
        neon = self.neon
        branch = neon.branch(branch_id)
        source = neon.branch(request.source_branch_id)
        if source.id == branch.id:
            raise bad_request(
                "restoring a branch to its own history needs source_lsn or source_timestamp, "
                "and the local server keeps no history"
            )
        if branch.protected:
            raise bad_request(f"branch {branch.id} is protected and cannot be reset")
        kids = neon.children(branch.id)
        if kids and not request.preserve_under_name:
            raise bad_request(f"branch {branch.id} has children: restoring it needs preserve_under_name")
        if request.preserve_under_name:
            self._check_name(request.preserve_under_name)
        neon.ops.check_unlocked()
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
        neon.ops.spawn(
            lambda: self._run_restore(branch, source, preserved, eps, ops, fail), f"restore {branch.id}"
        )
        return branch, ops

    def _preserve(self, branch: BranchRecord, name: str, stamp: str) -> BranchRecord:
        """The branch as it is now, under `name`: it takes the branch's databases (no
        copy) and its children; the branch gets new copies of the source's."""
        neon = self.neon
        saved = self._new_record(name, branch.parent_id, stamp)
        saved.current_state, saved.pending_state = "ready", None
        # the branch keeps its passwords (its endpoints, its URLs); the saved state gets its own
        saved.roles = neon.catalog.roles_like(branch, stamp)
        saved.databases = {n: replace(db, id=database_id(saved.id, n)) for n, db in branch.databases.items()}
        for child in neon.children(branch.id):
            child.parent_id = saved.id
        neon.state.branches[saved.id] = saved
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
        preserved: BranchRecord | None,
        eps: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
    ) -> None:
        neon = self.neon
        stamp = iso(now())
        catalog, replace, copies, drop = self._restore_plan(branch, source, preserved is not None, stamp)
        roles = neon.catalog.roles_like(source, stamp, keep=branch)
        try:
            neon.ops.begin(ops[0])
            await neon.ops.preamble(fail, [op.action for op in ops])
            made = await self._copy(copies)
            try:
                for target, template, owner in replace:
                    await neon.dataplane.replace_database(target, template=template, owner=owner)
            except BaseException:
                await self._drop_all(made)
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
        await self._drop_all(drop)
        for ep in eps:
            neon.dataplane.drop_connections(ep.id)  # sessions on the old data end, as on Neon
        neon.ops.end(ops[0], "finished")
        moment = now()
        branch.last_reset_at = iso(moment)
        if branch.ttl_interval_seconds:  # a reset starts the countdown again
            branch.expires_at = iso(moment + timedelta(seconds=branch.ttl_interval_seconds))
        neon.set_branch_state(branch, "ready")
        for op in ops[1:]:
            neon.ops.end(op, "finished")
        neon.save()

    def _unpreserve(self, branch: BranchRecord, preserved: BranchRecord) -> None:
        for child in self.neon.children(preserved.id):
            child.parent_id = branch.id
        self.neon.state.branches.pop(preserved.id, None)
