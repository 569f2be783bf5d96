"""Roles and databases of the local server's branches.

On Neon, roles and databases belong to a branch and are copied to its children. Here a
branch's catalog is a record per role and per database; the data plane brings the
branch's own PostgreSQL instance in line with it (`cathouse_harness.local.instance_plane`).
A database made through the API is a record until its branch's next sync or first use.

Passwords: each branch's roles have their own (`RoleRecord.password`), new for every
branch, where Neon copies a parent's to its children (except under a protected parent):
a password handed out for one branch then opens that branch only.

Like Neon's `apply_config`, a change of roles or databases ends the connections of the
branch's endpoints.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api.api_validation import DatabaseChange, point_in_time
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.state import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    LocalState,
    OperationRecord,
    RoleRecord,
    database_id,
    iso,
    now,
)
from cathouse_harness.local.data.proxy import Refusal
from cathouse_harness.local.data.startup_options import TimeTravel
from cathouse_harness.support.redact import register_secret

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore
    from cathouse_harness.local.control.history import Located

class Copy(NamedTuple):
    """One database to copy: the new PostgreSQL database, its template, its owner."""

    target: str
    template: str
    owner: str


def conflict(message: str) -> ApiError:
    return ApiError(409, "CONFLICT", message)


def serving(state: LocalState, endpoint_id: str) -> tuple[EndpointRecord, BranchRecord]:
    """The endpoint and its branch when it may take connections; a Refusal otherwise."""
    ep = state.endpoints.get(endpoint_id)
    branch = state.branches.get(ep.branch_id) if ep is not None else None
    if ep is None or branch is None or branch.deleting:
        raise Refusal("08006", f"endpoint {endpoint_id} does not exist")
    if ep.disabled:
        raise Refusal("08006", f"endpoint {endpoint_id} is disabled")
    return ep, branch


class Catalog:
    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon
        # Databases being made on first use, so two first connections make one.
        self._making: dict[tuple[str, str], asyncio.Future[str]] = {}

    # ------------------------------------------------------------------ lookups

    def role(self, branch: BranchRecord, name: str) -> RoleRecord:
        found = branch.roles.get(name)
        if found is None:
            raise ApiError(404, "NOT_FOUND", f"role {name} not found on branch {branch.id}")
        return found

    def database(self, branch: BranchRecord, name: str) -> DatabaseRecord:
        found = branch.databases.get(name)
        if found is None:
            raise ApiError(404, "NOT_FOUND", f"database {name} not found on branch {branch.id}")
        return found

    def password(self, branch: BranchRecord, name: str) -> str:
        return self.role(branch, name).password

    def new_role(self, name: str, stamp: str, *, protected: bool = False) -> RoleRecord:
        """A role record with a password of its own, registered for scrubbing."""
        password = ids.role_password()
        register_secret(password)
        return RoleRecord(name, stamp, stamp, protected, password=password)

    def roles_like(
        self, source: BranchRecord, stamp: str, *, keep: BranchRecord | None = None
    ) -> dict[str, RoleRecord]:
        """The roles of `source` for another branch: new passwords, except for the roles
        `keep` (the branch being restored) already has, whose URLs must keep working."""
        kept = keep.roles if keep is not None else {}
        return {
            n: RoleRecord(n, stamp, stamp, r.protected, password=kept[n].password)
            if n in kept
            else self.new_role(n, stamp, protected=r.protected)
            for n, r in source.roles.items()
        }

    def new_physical(self) -> str:
        """A fresh PostgreSQL database name (short, safe, unused)."""
        return "db_" + secrets.token_hex(8)

    def copy_for(self, parent: BranchRecord, child: BranchRecord, stamp: str) -> list[Copy]:
        """Give `child` the roles and databases of `parent`; the PostgreSQL databases to
        copy for it. The configured database comes first and takes the child's
        own name (`ids.physical_name`), so the first copy is the one a fork waits for."""
        child.roles = self.roles_like(parent, stamp)
        first = self.neon.state.database_name
        copies: list[Copy] = []
        child.databases = {}
        for db in sorted(parent.databases.values(), key=lambda d: d.name != first):
            physical = None
            if db.physical is not None:
                physical = child.physical if not copies else self.new_physical()
                copies.append(Copy(physical, db.physical, db.owner_name))
            child.databases[db.name] = DatabaseRecord(
                database_id(child.id, db.name), db.name, db.owner_name, stamp, stamp, physical
            )
        return copies

    # ------------------------------------------------------------------ history

    async def located_at(self, branch: BranchRecord, at: TimeTravel) -> Located:
        """Where the history has `branch` as of a time-travel connection's moment; a
        Refusal with the history's line when nowhere."""
        try:
            point = point_in_time(
                {"neon_lsn": at.lsn, "neon_timestamp": at.timestamp}, "neon_lsn", "neon_timestamp"
            )
            assert point is not None
            current = await self.neon.history.sample(branch.id) if point.lsn else None
            return self.neon.history.locate(branch, point, current, seen_at=at.arrived)
        except ApiError as refused:
            raise Refusal("08004", str(refused)) from None

    async def materialize(self, branch: BranchRecord, db: DatabaseRecord) -> str:
        key = (branch.id, db.name)
        making = self._making.get(key)
        if making is None:
            making = asyncio.ensure_future(self._make(db))
            self._making[key] = making
            making.add_done_callback(lambda _: self._making.pop(key, None))
        return await asyncio.shield(making)

    async def _make(self, db: DatabaseRecord) -> str:
        physical = self.new_physical()
        await self.neon.dataplane.create_database(physical, owner=db.owner_name)
        db.physical = physical
        self.neon.save()
        return physical

    # ------------------------------------------------------------------ mutations

    def _config_ops(self, branch: BranchRecord) -> list[OperationRecord]:
        eps = self.neon.branch_endpoints(branch.id)
        return [self.neon.ops.new("apply_config", branch.id, ep.id) for ep in eps] or [
            self.neon.ops.new("apply_config", branch.id)
        ]

    def _apply(
        self, branch: BranchRecord, work: Callable[[], Awaitable[None]] | None, name: str
    ) -> list[OperationRecord]:
        """Operations for a catalog change on `branch`; `work` runs in them, then the
        branch's connections end, as a Neon compute's do when its config is applied."""
        ops = self._config_ops(branch)

        async def run() -> None:
            if work is not None:
                await work()
            for ep in self.neon.branch_endpoints(branch.id):
                self.neon.dataplane.drop_connections(ep.id)

        self.neon.ops.run_quick(ops, run, name)
        self.neon.save()
        return ops

    def _mutable(self, branch_id: str) -> BranchRecord:
        branch = self.neon.branch(branch_id)
        self.neon.ops.check_unlocked()
        return branch

    def create_role(self, branch_id: str, name: str) -> tuple[RoleRecord, list[OperationRecord]]:
        branch = self._mutable(branch_id)
        if name in branch.roles:
            raise conflict(f"role {name} already exists on branch {branch.id}")
        role = self.new_role(name, iso(now()))
        branch.roles[name] = role
        return role, self._apply(branch, None, f"create role {name}")

    def delete_role(self, branch_id: str, name: str) -> tuple[RoleRecord, list[OperationRecord]] | None:
        branch = self.neon.branch(branch_id)
        role = branch.roles.get(name)
        if role is None:
            return None
        owned = sorted(db.name for db in branch.databases.values() if db.owner_name == name)
        if owned:
            raise ApiError(
                422,
                "ROLE_OWNS_DATABASES",
                f"role {name} owns database(s) {', '.join(owned)}; delete them first",
            )
        self.neon.ops.check_unlocked()
        del branch.roles[name]
        return role, self._apply(branch, None, f"delete role {name}")

    def reset_password(self, branch_id: str, name: str) -> tuple[RoleRecord, str, list[OperationRecord]]:
        branch = self._mutable(branch_id)
        role = self.role(branch, name)
        # this branch's password only: other branches with the role keep theirs
        role.password = self.new_role(name, "").password
        role.updated_at = iso(now())
        return role, role.password, self._apply(branch, None, f"reset password of {name}")

    def create_database(
        self, branch_id: str, change: DatabaseChange
    ) -> tuple[DatabaseRecord, list[OperationRecord]]:
        branch = self._mutable(branch_id)
        assert change.name is not None and change.owner_name is not None
        if change.name in branch.databases:
            raise conflict(f"database {change.name} already exists on branch {branch.id}")
        self.role(branch, change.owner_name)
        stamp = iso(now())
        db = DatabaseRecord(database_id(branch.id, change.name), change.name, change.owner_name, stamp, stamp)
        branch.databases[db.name] = db
        # Nothing to make yet: the database is made on its first connection.
        return db, self._apply(branch, None, f"create database {db.name}")

    def update_database(
        self, branch_id: str, name: str, change: DatabaseChange
    ) -> tuple[DatabaseRecord, list[OperationRecord]]:
        branch = self._mutable(branch_id)
        db = self.database(branch, name)
        if change.name and change.name != name and change.name in branch.databases:
            raise conflict(f"database {change.name} already exists on branch {branch.id}")
        owner = change.owner_name
        if owner is not None:
            self.role(branch, owner)
        if change.name and change.name != name:
            # Only the name a client asks for changes; the PostgreSQL database stays.
            del branch.databases[name]
            db.name = change.name
            branch.databases[db.name] = db
        db.updated_at = iso(now())
        new_owner = owner is not None and owner != db.owner_name
        if owner is not None:
            db.owner_name = owner

        async def change_owner() -> None:
            if new_owner and db.physical is not None:
                await self.neon.dataplane.set_database_owner(db.physical, db.owner_name)

        return db, self._apply(branch, change_owner, f"update database {name}")

    def delete_database(
        self, branch_id: str, name: str
    ) -> tuple[DatabaseRecord, list[OperationRecord]] | None:
        branch = self.neon.branch(branch_id)
        db = branch.databases.get(name)
        if db is None:
            return None
        self.neon.ops.check_unlocked()
        del branch.databases[name]

        async def drop() -> None:
            if db.physical is not None:
                await self.neon.dataplane.drop_database(db.physical)

        return db, self._apply(branch, drop, f"delete database {name}")
