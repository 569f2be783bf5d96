"""Creating a branch: the one Neon request that is not idempotent.

After an attempt that may have reached the server, the client looks the branch up by
its exact name before sending the create again, so a lost answer never makes two
branches; a branch found that way is rebuilt into the answer the create would have
given (`recovered=True`). With `wait`, the create returns once its operations finished
and its endpoints accept connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.base import q
from cathouse_harness.neon.branches import BranchesMixin, newest
from cathouse_harness.neon.endpoints import EndpointsMixin
from cathouse_harness.neon.models import Branch, BranchCreated, ConnectionInfo, Database, Operation
from cathouse_harness.neon.operations import NeonOperationError
from cathouse_harness.neon.roles import RolesMixin
from cathouse_harness.neon.transport import Answer, Progress
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import Secret
from cathouse_harness.support.timestamps import format_time

log = get_logger("neon")

# A created branch found by name counts as ours only if Neon says it was made no earlier
# than this before our first attempt (allows for clock skew between us and Neon).
_CREATED_SKEW = timedelta(minutes=5)

# The last-chance lookup after a create gave up gets at least this much time.
_FINAL_LOOKUP_BUDGET = 10.0


@dataclass(frozen=True)
class _CreateLookup:
    """How a create recognises its own branch when it finds one by name."""

    name: str
    parent_id: str | None
    annotation: Mapping[str, str] | None
    not_before: datetime

    def matches(self, branch: Branch) -> bool:
        if branch.name != self.name:
            return False
        if self.parent_id and branch.parent_id and branch.parent_id != self.parent_id:
            return False
        # A server that does not report annotations cannot contradict ours; one that
        # reports different ones names somebody else's branch.
        if (
            self.annotation
            and branch.annotation
            and any(branch.annotation.get(k) != v for k, v in self.annotation.items())
        ):
            return False
        return branch.created_at is None or branch.created_at >= self.not_before


def _create_body(
    name: str,
    *,
    parent_id: str | None,
    parent_lsn: str | None,
    parent_timestamp: datetime | None,
    expires_at: datetime | None,
    protected: bool,
    annotation: Mapping[str, str] | None,
    endpoint: bool,
    init_source: str | None,
) -> dict[str, Any]:
    """The JSON body of `POST /projects/{id}/branches`, with only the fields given."""
    branch: dict[str, Any] = {"name": name}
    if parent_id:
        branch["parent_id"] = parent_id
    if parent_lsn:
        branch["parent_lsn"] = parent_lsn
    if parent_timestamp is not None:
        branch["parent_timestamp"] = format_time(parent_timestamp)
    if expires_at is not None:
        branch["expires_at"] = format_time(expires_at)
    if protected:
        branch["protected"] = True
    if init_source:
        branch["init_source"] = init_source
    body: dict[str, Any] = {"branch": branch}
    if endpoint:
        body["endpoints"] = [{"type": "read_write"}]
    if annotation:
        body["annotation_value"] = dict(annotation)
    return body


def _connection_info(direct: Secret, pooled: Secret, db: Database) -> ConnectionInfo:
    """The entry a create answer would have listed for `db`, from Neon's two URIs."""
    return ConnectionInfo.from_api(
        {
            "connection_uri": direct.reveal(),
            "connection_parameters": {
                "database": db.name,
                "role": db.owner_name,
                "pooler_host": urlsplit(pooled.reveal()).hostname,
                "pooler_port": urlsplit(pooled.reveal()).port,
            },
        }
    )


class CreateMixin(BranchesMixin, EndpointsMixin, RolesMixin):
    async def create_branch(
        self,
        project_id: str,
        *,
        name: str,
        parent_id: str | None = None,
        parent_lsn: str | None = None,
        parent_timestamp: datetime | None = None,
        expires_at: datetime | None = None,
        protected: bool = False,
        annotation: Mapping[str, str] | None = None,
        endpoint: bool = True,
        init_source: str | None = None,
        wait: bool = True,
        wait_timeout: float = 120,
    ) -> BranchCreated:
        """Create a branch (with a read-write endpoint unless `endpoint=False`).

        Never makes two: once an attempt may have reached Neon (timeout, dropped
        connection, 5xx), every later attempt is preceded by a lookup by exact name, and
        a branch found there is returned (`recovered=True`) instead of creating another.
        With `wait`, returns once its operations finished and its endpoints accept
        connections, with the branch and endpoints re-read in that state.
        """
        body = _create_body(
            name, parent_id=parent_id, parent_lsn=parent_lsn, parent_timestamp=parent_timestamp,
            expires_at=expires_at, protected=protected, annotation=annotation,
            endpoint=endpoint, init_source=init_source,
        )
        lookup = _CreateLookup(name, parent_id, annotation, not_before=datetime.now(UTC) - _CREATED_SKEW)
        outcome = await self._post_create(project_id, body, lookup)
        if isinstance(outcome, Branch):
            return await self._recovered(project_id, outcome, wait, wait_timeout)
        if annotation and not outcome.branch.annotation:
            outcome = replace(outcome, branch=outcome.branch.with_annotation(annotation))
        return await self._settle(project_id, outcome, wait, wait_timeout)

    async def _post_create(
        self, project_id: str, body: dict[str, Any], lookup: _CreateLookup
    ) -> BranchCreated | Branch:
        """Send the create until Neon answers (the answer), or until a lookup by name
        finds the branch an earlier attempt made (that branch); raise when it gives up."""
        path = f"/projects/{q(project_id)}/branches"
        progress = Progress(self._clock)
        deadline_at = progress.started + self.retry.deadline
        conflict_checked = False
        while True:
            if progress.may_have_acted:
                found = await self._find_created(project_id, lookup, deadline_at)
                if found is not None:
                    return found
            outcome = await self._transport.attempt(
                "POST", path, params=None, body=body, deadline_at=deadline_at, progress=progress
            )
            if isinstance(outcome, Answer):
                return BranchCreated.from_api(outcome.data)
            progress.may_have_acted |= outcome.may_have_acted
            if outcome.status == 409 and progress.may_have_acted and not conflict_checked:
                # The name is taken, most likely by our own earlier attempt: look it up.
                conflict_checked = True
                continue
            if await self._transport.pause(outcome, progress, deadline_at):
                continue
            error = self._transport.give_up(outcome, progress)
            if progress.may_have_acted:
                # Last chance to hand back a branch an attempt did make, so it is
                # not left behind without its id ever reaching the caller.
                budget = max(deadline_at, self._clock() + _FINAL_LOOKUP_BUDGET)
                try:
                    found = await self._find_created(project_id, lookup, budget)
                except NeonAPIError:
                    found = None
                if found is not None:
                    return found
            raise error

    async def _find_created(
        self, project_id: str, lookup: _CreateLookup, deadline_at: float
    ) -> Branch | None:
        branches = await self._list_branches(
            project_id, search=lookup.name, deadline_at=deadline_at
        )
        found = newest([b for b in branches if lookup.matches(b)])
        if found is not None:
            self.stats.recovered_creates += 1
            log.debug("create of %r: found %s after a lost answer", lookup.name, found.id)
        return found

    async def _recovered(
        self, project_id: str, branch: Branch, wait: bool, wait_timeout: float
    ) -> BranchCreated:
        """Rebuild what the create would have answered, from the branch found by name."""
        endpoints = await self.list_branch_endpoints(project_id, branch.id)
        roles = await self.list_roles(project_id, branch.id)
        databases = await self.list_databases(project_id, branch.id)
        # Neon lists operations newest first; a create's run oldest first.
        operations = [
            op for op in reversed(await self.list_operations(project_id))
            if op.branch_id == branch.id
        ]
        connections: list[ConnectionInfo] = []
        primary = next((e for e in endpoints if e.type == "read_write"), None)
        if primary is not None:
            for db in databases:
                direct, pooled = await self.connection_uris(
                    project_id, branch_id=branch.id, database_name=db.name,
                    role_name=db.owner_name, endpoint_id=primary.id,
                )
                connections.append(_connection_info(direct, pooled, db))
        created = BranchCreated(
            branch=branch,
            endpoints=tuple(endpoints),
            operations=tuple(operations),
            roles=tuple(roles),
            databases=tuple(databases),
            connection_uris=tuple(connections),
            recovered=True,
        )
        return await self._settle(project_id, created, wait, wait_timeout)

    async def _settle(
        self, project_id: str, created: BranchCreated, wait: bool, wait_timeout: float
    ) -> BranchCreated:
        """With `wait`, wait for the create's operations and endpoints, then re-read."""
        if not wait:
            return created
        until = self._clock() + wait_timeout

        def left() -> float:
            return max(until - self._clock(), 1.0)

        ops = list(created.operations)
        # Neon runs a mutation's operations one after another (an endpoint starts on the
        # branch the first one made), so the last one finishing means all did: wait for
        # it alone, one poll round instead of one per operation. A last one that failed
        # or was skipped sends us through all of them in order, so that an error names
        # the operation that really failed.
        operations: list[Operation] = []
        if ops:
            try:
                operations = await self.wait_for_operations(
                    project_id, ops[-1:], timeout=wait_timeout
                )
            except NeonOperationError as exc:
                if exc.timed_out:
                    raise
                await self.wait_for_operations(project_id, ops, timeout=left())
                raise
            if operations[0].status == "finished":
                earlier = [replace(op, status="finished") for op in ops[:-1]]
                operations = earlier + operations
            else:
                operations = await self.wait_for_operations(project_id, ops, timeout=left())
        started = {op.endpoint_id for op in operations if op.endpoint_id and op.status == "finished"}
        # A branch whose own operation finished is ready, and an endpoint whose start
        # finished is running: that is what the operations mean on Neon, so neither is
        # read again (a request saved on every create). Anything else is asked for.
        made = any(
            op.action == "create_branch" and op.status == "finished" and op.endpoint_id is None
            for op in operations
        )
        if made:
            branch = replace(created.branch, current_state="ready", pending_state=None)
        else:
            branch = await self.get_branch(project_id, created.branch.id)
        endpoints = [
            replace(ep, current_state="active", pending_state=None)
            if ep.id in started
            else await self.wait_for_endpoint(project_id, ep.id, timeout=left())
            for ep in created.endpoints
        ]
        if not branch.annotation and created.branch.annotation:
            branch = branch.with_annotation(created.branch.annotation)
        return replace(
            created, branch=branch, endpoints=tuple(endpoints), operations=tuple(operations)
        )
