"""Branches of the local server: create, update, delete, set as default; restores are
in `cathouse_harness.local.control.restoring`.

A child's databases are copies of its parent's (`CREATE DATABASE … TEMPLATE`, fenced by
the data plane), made by the create's background operation, from the parent's current
state or from the state the history (`cathouse_harness.local.control.history`) has at `parent_lsn` /
`parent_timestamp`. The rules are Neon's: a branch name is unique; no `expires_at` on
the default or a protected branch, on a branch with children, or as the parent of a new
branch; a schema-only branch is a root (no parent) and counts against the root-branch
limit; the default, the project's root and a protected branch cannot be deleted, nor a
branch with children; creates stop at the branch limit `/users/me` advertises.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api.api_validation import BranchCreate, BranchUpdate, Restore, _Unset
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.catalog import Copy
from cathouse_harness.local.control.history import replay_later
from cathouse_harness.local.control.operations import failure_reason, wake
from cathouse_harness.local.control.state import (
    BranchRecord,
    EndpointRecord,
    OperationRecord,
    iso,
    now,
    parse_time,
)
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import scrub

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore

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
        from cathouse_harness.local.control.restoring import Restoring

        self.neon = neon
        self.restoring = Restoring(neon)

    def check_name(self, name: str, *, exclude: str | None = None) -> str:
        for other in self.neon.live_branches():
            if other.name == name and other.id != exclude:
                raise ApiError(409, "CONFLICT", f"branch with name {name!r} already exists")
        return name

    def new_record(self, name: str | None, parent_id: str | None, stamp: str) -> BranchRecord:
        branch_id = ids.branch_id()
        return BranchRecord(
            id=branch_id,
            name=self.check_name(name or branch_id),
            physical=ids.physical_name(branch_id),
            parent_id=parent_id,
            created_at=stamp,
            updated_at=stamp,
            state_changed_at=stamp,
            parent_timestamp=stamp if parent_id else None,
        )

    # ------------------------------------------------------------------ create

    def _check_limits(self, request: BranchCreate, parent: BranchRecord) -> None:
        neon = self.neon
        if request.init_source == "schema-only":
            roots = [b for b in neon.live_branches() if b.parent_id is None]
            if len(roots) >= neon.root_branches_limit:
                raise ApiError(
                    422,
                    "ROOT_BRANCHES_LIMIT_EXCEEDED",
                    f"the project has reached its limit of {neon.root_branches_limit} root branches "
                    "(a schema-only branch is a root branch); delete one first",
                )
        elif parent.expires_at:
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

    async def create(
        self, request: BranchCreate, current_lsn: int | None = None
    ) -> tuple[BranchRecord, list[EndpointRecord], list[OperationRecord]]:
        """A child of `parent_id` (the default branch) as of now, or of the point
        `request.at` names where the history has it; a schema-only branch is a root
        with the parent's schema and no rows. `current_lsn`: PostgreSQL's WAL position,
        when the request names an LSN."""
        neon = self.neon
        state = neon.state
        parent = neon.branch(request.parent_id) if request.parent_id else state.default_branch
        self._check_limits(request, parent)
        neon.ops.check_unlocked()
        located = neon.history.locate(parent, request.at, current_lsn) if request.at else None
        schema_only = request.init_source == "schema-only"
        stamp = iso(now())
        branch = self.new_record(request.name, None if schema_only else parent.id, stamp)
        if located is not None:
            branch.parent_timestamp = located.timestamp or stamp
            branch.parent_lsn = located.lsn
        branch.expires_at, branch.ttl_interval_seconds = request.expires_at, _ttl(request.expires_at, stamp)
        branch.protected, branch.init_source = request.protected, request.init_source
        if request.annotation is not None:
            branch.annotation = request.annotation
            branch.annotation_created_at = branch.annotation_updated_at = stamp
        copies = neon.catalog.copy_for(located.source if located else parent, branch, stamp)
        if located is not None and located.replay:
            replay_later(neon.dataplane, [c.target for c in copies], located.moment, located.lsn)
        state.branches[branch.id] = branch
        neon.history.begin(branch.id, None if schema_only else parent.id, located.moment if located else None,
                           exact=located is not None and located.replay)
        ops = [neon.ops.new("create_branch", branch.id)]
        endpoints = self._new_endpoints(branch, request, stamp, ops)
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
            # before the copy ends wait for it (the relay waits until the branch's
            # instance exists), as Neon's proxy waits for a compute
            # still starting. During an injected delay or a latency profile's wait
            # before the copy, they still find no database.
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

    def _new_endpoints(
        self, branch: BranchRecord, request: BranchCreate, stamp: str, ops: list[OperationRecord]
    ) -> list[EndpointRecord]:
        """The endpoints `request` asks for, recorded, each with its start_compute
        operation added to `ops`."""
        endpoints: list[EndpointRecord] = []
        for spec in request.endpoints:
            ep = EndpointRecord(
                id=ids.endpoint_id(),
                branch_id=branch.id,
                created_at=stamp,
                updated_at=stamp,
                type=spec.type or "read_write",
            )
            self.neon.state.endpoints[ep.id] = ep
            endpoints.append(ep)
            ops.append(self.neon.ops.new("start_compute", branch.id, ep.id))
        return endpoints

    async def copy(
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
            await self.drop_all(made)
            raise
        return made

    async def drop_all(self, physicals: list[str]) -> None:
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
            made = await self.copy(copies, issued, schema_only=branch.init_source == "schema-only")
        except Exception as exc:
            wake(issued)  # the create's answer waits for this, and this for its answer
            if await opened:
                await self._abandon_create(branch, endpoints, ops, exc)
            return
        if not await opened:
            # The create was refused after all (no listener): nobody ever saw these copies.
            await self.drop_all(made)
            return
        # Neon's create time is waited after the copy, not before: the answer waits for
        # the copy to be issued (COPY_ISSUE_WAIT), and the child is the parent as of the
        # create, as on Neon.
        if branch.parent_id is not None and branch.parent_lsn is None:
            # an instance per branch knows the LSN its fork or replay holds the parent as of
            copy_lsn = getattr(neon.dataplane, "copy_lsn", None)
            branch.parent_lsn = copy_lsn(branch) if copy_lsn is not None else None
        neon.history.copied(branch.id, branch.parent_lsn, named=lambda lsn: self._named(branch, lsn))
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

    def _named(self, branch: BranchRecord, lsn: str) -> None:
        """The WAL position read after `branch`'s copy names the parent's state it copied."""
        if branch.parent_id is not None and branch.parent_lsn is None:
            branch.parent_lsn = lsn
            self.neon.save()

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
        name = self.check_name(request.name, exclude=branch.id) if request.name is not None else None
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
        if branch.parent_id is None and branch.init_source != "schema-only":
            raise bad_request(f"branch {branch.id} is the project's root branch and cannot be deleted")
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

    def restore(
        self, branch_id: str, request: Restore, current_lsn: int | None = None
    ) -> tuple[BranchRecord, list[OperationRecord]]:
        return self.restoring.restore(branch_id, request, current_lsn)
