"""The async Neon API v2 client the whole harness uses, for real Neon and the local server.

One `NeonClient` holds one `Transport` (transport.py: httpx, retries within one deadline,
every other answer a `NeonAPIError`) and speaks the API's resources over it. Branch
create is the one request that is not idempotent:
after an attempt that may have reached the server, the client looks the branch up by its
exact name before sending the create again, so a lost answer never makes two branches.

Secrets: the API key and every password or connection URI received are registered with
`harness.redact`, exceptions are built from scrubbed text and never chain httpx errors
(which hold the request and its Authorization header).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import httpx

from harness.errors import HarnessError, NeonAPIError
from harness.log import get_logger
from harness.neon.models import (
    Branch,
    BranchCreated,
    ConnectionInfo,
    Database,
    Endpoint,
    Operation,
    Project,
    Role,
    format_time,
    secret_uri,
)
from harness.neon.retry import RetryPolicy
from harness.neon.transport import Answer, Progress, Sleep, Transport
from harness.redact import Secret
from harness.settings import DEFAULT_API_HOST

log = get_logger("neon")

# Operation polling starts fast so a local server is not slowed down (a branch copy
# there takes ~20 ms), then backs off; on Neon this costs a few extra GETs per create.
_POLL_FIRST = 0.005
_POLL_MAX = 0.5
_POLL_GROWTH = 1.5

# A created branch found by name counts as ours only if Neon says it was made no earlier
# than this before our first attempt (allows for clock skew between us and Neon).
_CREATED_SKEW = timedelta(minutes=5)

# The last-chance lookup after a create gave up gets at least this much time.
_FINAL_LOOKUP_BUDGET = 10.0


class _Unset:
    """Marks "argument not given" where None is a meaningful value."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


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


def _q(segment: str) -> str:
    return quote(str(segment), safe="")


def _list(data: Any, key: str) -> list[Mapping[str, Any]]:
    value = data.get(key) if isinstance(data, Mapping) else None
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _obj(data: Any, key: str) -> Mapping[str, Any]:
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}


class NeonClient:
    """Async client for the subset of Neon API v2 the harness needs.

    `sleep`, `clock` and `rng` exist so tests can run retries and polling without waiting.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_host: str = DEFAULT_API_HOST,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "cathouse-harness/0.1",
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = Transport(
            api_key, api_host=api_host, retry=retry, timeout=timeout, transport=transport,
            user_agent=user_agent, sleep=sleep, clock=clock, rng=rng,
            on_locked=self._wait_for_project,
        )
        self.api_host = self._transport.api_host
        self.retry = self._transport.retry
        self.stats = self._transport.stats
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"NeonClient(api_host={self.api_host!r}, api_key='***')"

    async def __aenter__(self) -> NeonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

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
                f"/projects/{_q(project_id)}/operations", params={"limit": "20"}, deadline_at=deadline_at
            )
        except NeonAPIError:
            return False
        running = [op for op in map(Operation.from_api, _list(data, "operations")) if op.pending]
        if not running:
            return False
        self.stats.lock_waits += 1
        with contextlib.suppress(NeonAPIError):  # another's operation failed, or time ran out
            await self.wait_for_operations(
                project_id, running, timeout=max(deadline_at - self._clock(), 0.001)
            )
        return True

    # ---- account and projects ----------------------------------------------------

    async def check_auth(self) -> dict[str, Any]:
        """`GET /auth`: proves the key works; Neon answers who it belongs to."""
        data = await self._transport.get("/auth")
        return dict(data) if isinstance(data, Mapping) else {}

    async def list_projects(self) -> list[Project]:
        data = await self._transport.get("/projects", params={"limit": "400"})
        return [Project.from_api(p) for p in _list(data, "projects")]

    async def get_project(self, project_id: str) -> Project:
        data = await self._transport.get(f"/projects/{_q(project_id)}")
        return Project.from_api(_obj(data, "project"))

    # ---- branches ----------------------------------------------------------------

    async def list_branches(self, project_id: str, *, search: str | None = None) -> list[Branch]:
        """Branches with their annotations (Neon sends those beside the list, by id)."""
        return await self._list_branches(project_id, search=search)

    async def _list_branches(
        self, project_id: str, *, search: str | None = None, deadline_at: float | None = None
    ) -> list[Branch]:
        params = {"search": search} if search else None
        data = await self._transport.get(
            f"/projects/{_q(project_id)}/branches", params=params, deadline_at=deadline_at
        )
        annotations = _obj(data, "annotations")
        return [
            Branch.from_api(b, annotations.get(str(b.get("id")))) for b in _list(data, "branches")
        ]

    async def get_branch(self, project_id: str, branch_id: str) -> Branch:
        data = await self._transport.get(f"/projects/{_q(project_id)}/branches/{_q(branch_id)}")
        return Branch.from_api(_obj(data, "branch"), _obj(data, "annotation"))

    async def find_branch(self, project_id: str, name: str) -> Branch | None:
        """The branch called exactly `name` (the newest if Neon holds several), or None."""
        matches = [b for b in await self.list_branches(project_id, search=name) if b.name == name]
        return _newest(matches)

    async def resolve_branch(self, project_id: str, name_or_id: str) -> Branch:
        """A branch by id (`br-…`) or exact name; NeonAPIError with status 404 if none."""
        if name_or_id.startswith("br-"):
            path = f"/projects/{_q(project_id)}/branches/{_q(name_or_id)}"
            answer = await self._transport.call("GET", path, accept=frozenset({404}))
            if answer.data is not None:
                return Branch.from_api(_obj(answer.data, "branch"), _obj(answer.data, "annotation"))
        found = await self.find_branch(project_id, name_or_id)
        if found is None:
            raise NeonAPIError(
                f"no branch with id or name {name_or_id!r} in project {project_id}",
                status=404,
                code="NOT_FOUND",
                method="GET",
                path=f"/projects/{project_id}/branches",
            )
        return found

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

        path = f"/projects/{_q(project_id)}/branches"
        progress = Progress(self._clock)
        deadline_at = progress.started + self.retry.deadline
        lookup = _CreateLookup(name, parent_id, annotation, not_before=_utcnow() - _CREATED_SKEW)
        conflict_checked = False
        while True:
            if progress.may_have_acted:
                found = await self._find_created(project_id, lookup, deadline_at)
                if found is not None:
                    return await self._recovered(project_id, found, wait, wait_timeout)
            outcome = await self._transport.attempt(
                "POST", path, params=None, body=body, deadline_at=deadline_at, progress=progress
            )
            if isinstance(outcome, Answer):
                created = BranchCreated.from_api(outcome.data)
                if annotation and not created.branch.annotation:
                    created = replace(created, branch=created.branch.with_annotation(annotation))
                return await self._settle(project_id, created, wait, wait_timeout)
            progress.may_have_acted |= outcome.may_have_acted
            if outcome.status == 409 and progress.may_have_acted and not conflict_checked:
                # The name is taken, most likely by our own earlier attempt: look it up.
                conflict_checked = True
                continue
            if not await self._transport.pause(outcome, progress, deadline_at):
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
                        return await self._recovered(project_id, found, wait, wait_timeout)
                raise error

    async def _find_created(
        self, project_id: str, lookup: _CreateLookup, deadline_at: float
    ) -> Branch | None:
        branches = await self._list_branches(
            project_id, search=lookup.name, deadline_at=deadline_at
        )
        found = _newest([b for b in branches if lookup.matches(b)])
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
                direct = await self.connection_uri(
                    project_id,
                    branch_id=branch.id,
                    database_name=db.name,
                    role_name=db.owner_name,
                    endpoint_id=primary.id,
                )
                pooled = await self.connection_uri(
                    project_id,
                    branch_id=branch.id,
                    database_name=db.name,
                    role_name=db.owner_name,
                    endpoint_id=primary.id,
                    pooled=True,
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

    async def update_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        expires_at: datetime | None | _Unset = UNSET,
    ) -> Branch:
        """Rename and/or change `expires_at`; `expires_at=None` removes the expiry."""
        patch: dict[str, Any] = {}
        if name is not None:
            patch["name"] = name
        if not isinstance(expires_at, _Unset):
            patch["expires_at"] = None if expires_at is None else format_time(expires_at)
        if not patch:
            return await self.get_branch(project_id, branch_id)
        answer = await self._transport.call(
            "PATCH",
            f"/projects/{_q(project_id)}/branches/{_q(branch_id)}",
            body={"branch": patch},
        )
        return Branch.from_api(_obj(answer.data, "branch"), _obj(answer.data, "annotation"))

    async def delete_branch(
        self, project_id: str, branch_id: str, *, wait: bool = True, missing_ok: bool = True
    ) -> bool:
        """Delete a branch. True if this call deleted it, False if it was already gone.

        Neon answers 204 for a branch that does not exist (or no longer does); a 404 is
        taken the same way. Either, after an earlier attempt that may have reached Neon,
        counts as our delete.
        """
        path = f"/projects/{_q(project_id)}/branches/{_q(branch_id)}"
        progress = Progress(self._clock)
        answer = await self._transport.call("DELETE", path, accept=frozenset({404}), progress=progress)
        if answer.status in (204, 404):
            if not missing_ok:
                raise NeonAPIError(
                    f"branch {branch_id} not found in project {project_id}",
                    status=404,
                    code="NOT_FOUND",
                    method="DELETE",
                    path=path,
                )
            return progress.may_have_acted
        if wait:
            await self.wait_for_operations(
                project_id, [Operation.from_api(o) for o in _list(answer.data, "operations")]
            )
        return True

    async def restore_branch(
        self, project_id: str, branch_id: str, *, source_branch_id: str, wait: bool = True
    ) -> Branch:
        """Reset `branch_id` to the current state of `source_branch_id` (usually its parent).

        Retried like the idempotent requests: restoring twice to the same source ends in
        the same state.
        """
        answer = await self._transport.call(
            "POST",
            f"/projects/{_q(project_id)}/branches/{_q(branch_id)}/restore",
            body={"source_branch_id": source_branch_id},
        )
        if not wait:
            return Branch.from_api(_obj(answer.data, "branch"), _obj(answer.data, "annotation"))
        await self.wait_for_operations(
            project_id, [Operation.from_api(o) for o in _list(answer.data, "operations")]
        )
        return await self.get_branch(project_id, branch_id)

    async def list_branch_endpoints(self, project_id: str, branch_id: str) -> list[Endpoint]:
        data = await self._transport.get(f"/projects/{_q(project_id)}/branches/{_q(branch_id)}/endpoints")
        return [Endpoint.from_api(e) for e in _list(data, "endpoints")]

    async def list_databases(self, project_id: str, branch_id: str) -> list[Database]:
        data = await self._transport.get(f"/projects/{_q(project_id)}/branches/{_q(branch_id)}/databases")
        return [Database.from_api(d) for d in _list(data, "databases")]

    async def list_roles(self, project_id: str, branch_id: str) -> list[Role]:
        data = await self._transport.get(f"/projects/{_q(project_id)}/branches/{_q(branch_id)}/roles")
        return [Role.from_api(r) for r in _list(data, "roles")]

    async def reveal_password(self, project_id: str, branch_id: str, role: str) -> Secret:
        data = await self._transport.get(
            f"/projects/{_q(project_id)}/branches/{_q(branch_id)}/roles/{_q(role)}/reveal_password"
        )
        password = data.get("password") if isinstance(data, Mapping) else None
        if not password:
            raise NeonAPIError(
                f"no password in the answer for role {role!r} on branch {branch_id}",
                status=200,
                method="GET",
                path=f"/projects/{project_id}/branches/{branch_id}/roles",
            )
        return Secret(str(password))

    # ---- endpoints, operations, connection URIs ----------------------------------

    async def list_endpoints(self, project_id: str) -> list[Endpoint]:
        data = await self._transport.get(f"/projects/{_q(project_id)}/endpoints")
        return [Endpoint.from_api(e) for e in _list(data, "endpoints")]

    async def get_endpoint(self, project_id: str, endpoint_id: str) -> Endpoint:
        data = await self._transport.get(f"/projects/{_q(project_id)}/endpoints/{_q(endpoint_id)}")
        return Endpoint.from_api(_obj(data, "endpoint"))

    async def get_operation(self, project_id: str, operation_id: str) -> Operation:
        data = await self._transport.get(f"/projects/{_q(project_id)}/operations/{_q(operation_id)}")
        return Operation.from_api(_obj(data, "operation"))

    async def list_operations(self, project_id: str) -> list[Operation]:
        """The project's recent operations (Neon's first page, newest first)."""
        data = await self._transport.get(f"/projects/{_q(project_id)}/operations")
        return [Operation.from_api(o) for o in _list(data, "operations")]

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
        until = self._clock() + timeout
        interval = _POLL_FIRST
        while pending:
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
                    break
                pending.pop(0)
            if not pending:
                break
            left = until - self._clock()
            if left <= 0:
                raise NeonOperationError(latest[pending[0]], timeout=timeout)
            await self._sleep(min(interval, left))
            interval = min(_POLL_MAX, interval * _POLL_GROWTH)
        return [latest[i] for i in order]

    async def wait_for_endpoint(
        self, project_id: str, endpoint_id: str, *, timeout: float = 60
    ) -> Endpoint:
        """Poll until the endpoint is `active` or `idle` (both accept connections)."""
        until = self._clock() + timeout
        interval = _POLL_FIRST
        while True:
            endpoint = await self.get_endpoint(project_id, endpoint_id)
            if endpoint.usable:
                return endpoint
            left = until - self._clock()
            if left <= 0:
                raise NeonAPIError(
                    f"endpoint {endpoint_id} still {endpoint.current_state or 'unknown'}"
                    f" after {timeout:g}s",
                    status=0,
                    code="ENDPOINT_TIMEOUT",
                    method="GET",
                    path=f"/projects/{project_id}/endpoints/{endpoint_id}",
                )
            await self._sleep(min(interval, left))
            interval = min(_POLL_MAX, interval * _POLL_GROWTH)

    async def connection_uri(
        self,
        project_id: str,
        *,
        branch_id: str,
        database_name: str,
        role_name: str,
        endpoint_id: str | None = None,
        pooled: bool = False,
    ) -> Secret:
        """Neon's connection URI (with the password) for a role and database."""
        params = {
            "branch_id": branch_id,
            "database_name": database_name,
            "role_name": role_name,
            "pooled": "true" if pooled else "false",
        }
        if endpoint_id:
            params["endpoint_id"] = endpoint_id
        data = await self._transport.get(f"/projects/{_q(project_id)}/connection_uri", params=params)
        uri = data.get("uri") if isinstance(data, Mapping) else None
        if not uri:
            raise NeonAPIError(
                "no uri in the answer",
                status=200,
                method="GET",
                path=f"/projects/{project_id}/connection_uri",
            )
        return secret_uri(str(uri))


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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _newest(branches: list[Branch]) -> Branch | None:
    if not branches:
        return None
    floor = datetime.min.replace(tzinfo=UTC)
    return max(branches, key=lambda b: b.created_at or floor)


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
