"""Branch lifecycle and the safety rules around it.

Every branch the harness creates carries three marks: a name under `harness/`, the
harness annotation (with the run id and the kind of branch) and an `expires_at`. The
harness only ever mutates a branch that carries the annotation and is neither the
project's default branch nor protected; `ensure_owned` is the single gate every
mutating path goes through.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

from cathouse_harness.branching.endpoint_check import verify_urls_point_at
from cathouse_harness.branching.names import NAME_PREFIX, SPARE_PREFIX, given_name_candidates

# session.py and templates.py name these through this module
from cathouse_harness.branching.names import building_name as building_name
from cathouse_harness.branching.names import session_branch_name as session_branch_name
from cathouse_harness.branching.names import template_branch_name as template_branch_name
from cathouse_harness.cleanup.runs import owner_token
from cathouse_harness.errors import ConfigError, NeonAPIError, SafetyError
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.marks import (
    MARK,
    MARK_FINGERPRINT,
    MARK_HOST,
    MARK_KIND,
    MARK_OWNER,
    MARK_PARENT,
    MARK_PID,
    MARK_RUN,
)
from cathouse_harness.support.redact import Secret, register_url

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.neon.client import NeonClient
    from cathouse_harness.neon.models import Branch, BranchCreated, Endpoint

log = get_logger("branches")
T = TypeVar("T")

# a create or delete whose operation fails (not times out) is asked for again
CREATE_ATTEMPTS = 3

# "rehearsal": a fork of `cathouse-branch rehearse` (cathouse_harness.rehearsal)
Kind = Literal["session", "template", "dev", "spare", "rehearsal"]


@dataclass(frozen=True)
class BranchHandle:
    """A branch the harness created, with the URLs handed out for it."""

    project_id: str
    id: str
    name: str
    parent_id: str | None
    endpoint_id: str
    direct_url: Secret
    pooled_url: Secret
    kind: Kind = "session"
    created_seconds: float = 0.0
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)
    # An xdist worker's own database on a branch the run's workers share
    # (`cathouse_harness.xdist.worker_databases`), which its URLs name; None: the branch's own database.
    database: str | None = None

    def __repr__(self) -> str:
        return (
            f"BranchHandle(id={self.id!r}, name={self.name!r}, parent_id={self.parent_id!r}, "
            f"endpoint_id={self.endpoint_id!r}, kind={self.kind!r}, database={self.database!r})"
        )


async def resolve_given_branch(client: NeonClient, project_id: str, given: str) -> Branch:
    """A branch as a person names it on the command line: its `br-` id, its full name, or
    the name they gave to `up` (X for harness/dev/X). ConfigError if none matches."""
    candidates = given_name_candidates(given)
    for candidate in candidates:
        try:
            return await client.resolve_branch(project_id, candidate)
        except NeonAPIError as exc:
            if exc.status != 404:
                raise
    tried = " or ".join(repr(c) for c in candidates)
    raise ConfigError(
        f"no branch with id or name {tried} in project {project_id}",
        hint="cathouse-branch list shows the branches the harness made",
    )


def owned_here(branch: Branch, run_id: str, owner: str | None = None) -> bool:
    """Whether `branch` carries this run's id and this process's (or `owner`'s) token."""
    return (
        branch.annotation.get(MARK_RUN) == run_id
        and branch.annotation.get(MARK_OWNER) == (owner or owner_token())
    )


async def find_own_branch(
    client: NeonClient, project_id: str, name: str, *, run_id: str, owner: str | None = None
) -> Branch | None:
    """The branch named `name` when this run and process created it; None otherwise (a
    failed create's name may belong to another run given the same run id)."""
    found = await client.find_branch(project_id, name)
    return found if found is not None and owned_here(found, run_id, owner) else None


async def taken_by_another(
    client: NeonClient, project_id: str, name: str, exc: NeonAPIError, *, run_id: str
) -> bool:
    """Whether a create of `name` failed because another harness run's branch has that
    name (a 409 on a name that is ours is no reason to rename, and a branch without the
    harness's marks in the way stops the run: it is nobody's to work around)."""
    if exc.status != 409:
        return False
    found = await client.find_branch(project_id, name)
    return found is not None and is_harness_branch(found) and not owned_here(found, run_id)


def marks(
    kind: Kind, run_id: str, *, fingerprint: str | None = None, parent: str | None = None
) -> dict[str, str]:
    annotation = {
        MARK: "1",
        MARK_RUN: run_id,
        MARK_KIND: kind,
        MARK_HOST: socket.gethostname()[:60],
        MARK_PID: str(os.getpid()),
        MARK_OWNER: owner_token(),
    }
    if fingerprint:
        annotation[MARK_FINGERPRINT] = fingerprint
    if parent:
        annotation[MARK_PARENT] = parent
    return annotation


def made_from(branch: Branch) -> str | None:
    """The branch `branch` was made from: its parent, or for a schema-only root its annotation's."""
    return branch.parent_id or branch.annotation.get(MARK_PARENT)


_NOT_CREATED = "the harness did not create it"


def _why_not_ours(branch: Branch) -> str | None:
    """Why the harness may not change `branch`; None when it may (the one ownership rule)."""
    if branch.default:
        return "it is the project's default branch"
    if branch.protected:
        return "it is protected"
    if branch.annotation.get(MARK) != "1" or not branch.name.startswith(NAME_PREFIX):
        return _NOT_CREATED
    return None


def is_harness_branch(branch: Branch) -> bool:
    return _why_not_ours(branch) is None


def ensure_owned(branch: Branch, action: str) -> None:
    """Raise SafetyError unless the harness may `action` this branch."""
    reason = _why_not_ours(branch)
    if reason is not None:
        raise SafetyError(
            f"refusing to {action} {branch.name} ({branch.id}): {reason}",
            hint="only branches named harness/... with the cathouse-harness annotation are touched"
            if reason == _NOT_CREATED
            else None,
        )


def ensure_dev(branch: Branch, action: str, *, finished_sessions: bool = False) -> None:
    """Raise SafetyError unless `branch` is a developer's branch (`cathouse-branch up`):
    a template belongs to every run, a test session's branch to a run that may be live.
    With `finished_sessions`, a session branch whose test process on this machine is gone
    (kept on failure, or left by a failed delete) passes too."""
    ensure_owned(branch, action)
    kind = branch.annotation.get(MARK_KIND)
    # a kept rehearsal fork is its developer's to remove, as a dev branch is
    if kind in ("dev", "rehearsal") or (finished_sessions and kind == "session" and _process_gone(branch)):
        return
    # A claimed spare (renamed from harness/spare/…) keeps the marks of the child that
    # forked it, whose pid is gone: its session's own liveness is not on the branch, so
    # it passes like a finished session's (kept on failure, the summary says `down` it).
    if finished_sessions and kind == "spare" and not branch.name.startswith(SPARE_PREFIX):
        return
    raise SafetyError(
        f"refusing to {action} {branch.name} ({branch.id}): it is a {kind or 'harness'} branch, "
        "not one of cathouse-branch up" + (" (its run may still be going)" if kind == "session" else ""),
        hint="developers' commands act on developers' branches; gc removes the rest",
    )


def _process_gone(branch: Branch) -> bool:
    """The test process that made `branch` ran on this machine and has ended."""
    from cathouse_harness.support.processes import pid_alive

    pid = branch.annotation.get(MARK_PID, "")
    same_host = branch.annotation.get(MARK_HOST) == socket.gethostname()[:60]
    return same_host and pid.isdigit() and not pid_alive(int(pid))


def refused_key(exc: NeonAPIError, settings: Settings) -> ConfigError | None:
    """A 401/403 means a bad (or revoked) key: a configuration error, named as such."""
    if exc.status not in (401, 403):
        return None
    return ConfigError(
        f"the API refused the key (HTTP {exc.status})",
        key="NEON_API_KEY",
        source=settings.source_of("api_key"),
        hint="check the key, or unset it to use the embedded default",
    )


async def resolve_parent(client: NeonClient, project_id: str, settings: Settings) -> Branch:
    """The configured parent branch; a missing project, a refused key or an unknown parent
    is a ConfigError naming the setting and where its value came from."""
    # Two independent reads, sent together: one round trip on every session's critical
    # path instead of two (on Neon, 0.1 s or more each). The project's answer is read
    # first, so a missing project or a refused key is named as such, not as a missing
    # branch.
    checked, resolved = await asyncio.gather(
        client.get_project(project_id),
        client.resolve_branch(project_id, settings.parent_branch),
        return_exceptions=True,
    )
    for outcome in (checked, resolved):  # Ctrl-C, cancellation, a bug: as they came
        if isinstance(outcome, BaseException) and not isinstance(outcome, NeonAPIError):
            raise outcome
    if isinstance(checked, NeonAPIError):
        refused = refused_key(checked, settings)
        if refused is not None:
            raise refused from None
        if checked.status == 404:
            raise ConfigError(
                f"project {project_id!r} not found", key="project_id",
                source=settings.source_of("project_id"),
            ) from None
    if isinstance(checked, BaseException):
        raise checked
    if isinstance(resolved, NeonAPIError) and resolved.status == 404:
        raise ConfigError(
            f"branch {settings.parent_branch!r} not found in project {project_id}",
            key="parent_branch", source=settings.source_of("parent_branch"),
        ) from None
    if isinstance(resolved, BaseException):
        raise resolved
    parent = resolved
    if is_harness_branch(parent):
        # another run's branch goes away with that run, taking its children's parent with it
        raise ConfigError(
            f"{parent.name} ({parent.id}) is a branch of the harness, which is never a parent",
            key="parent_branch", source=settings.source_of("parent_branch"),
            hint="fork from a branch of your own (main, a staging branch)",
        )
    return parent


def expiry(ttl: timedelta, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return (now + ttl).replace(microsecond=0)


async def create_owned_branch(
    client: NeonClient,
    project_id: str,
    *,
    name: str,
    parent_id: str,
    ttl: timedelta,
    kind: Kind,
    run_id: str,
    database: str,
    role: str,
    fingerprint: str | None = None,
    schema_only: bool = False,
    parent_timestamp: datetime | None = None,
) -> BranchHandle:
    """Create a marked branch with a read-write endpoint and hand out its URLs
    (`parent_timestamp`: of the parent as it was then)."""
    started = time.perf_counter()

    async def create() -> BranchCreated:
        return await client.create_branch(
            project_id,
            name=name,
            parent_id=parent_id,
            expires_at=expiry(ttl),
            annotation=marks(
                kind, run_id, fingerprint=fingerprint, parent=parent_id if schema_only else None
            ),
            init_source="schema-only" if schema_only else None,
            parent_timestamp=parent_timestamp,
            wait=True,
        )

    async def remove_leftover() -> None:
        leftover = await find_own_branch(client, project_id, name, run_id=run_id)
        if leftover is not None:
            await delete_owned_branch(client, project_id, leftover.id)

    created = await _until_its_operation_holds(f"creating {name}", create, remove_leftover)
    branch = created.branch
    # The create answer (re-read once its operations finished) already names the
    # endpoint and its URIs; ask the API again only when it does not.
    handle = _handle_from_created(
        created, project_id=project_id, database=database, role=role, kind=kind
    )
    if handle is None:
        handle = await handle_for(
            client, project_id, branch.id, database=database, role=role, kind=kind,
            name=branch.name, parent_id=branch.parent_id,
        )
    handle = replace(handle, created_seconds=time.perf_counter() - started)
    log.info("created branch %s (%s) from %s", handle.name, handle.id, parent_id)
    return handle


def _handle_from_created(
    created: BranchCreated, *, project_id: str, database: str, role: str, kind: Kind
) -> BranchHandle | None:
    """The handle from a finished create's own answer, with the same URL checks as
    `handle_for`; None when the answer lacks a usable endpoint or the URIs for
    `database` and `role` (then the caller asks the API)."""
    branch = created.branch
    endpoint = writable_endpoint(created.endpoints)
    if endpoint is None or not endpoint.usable:
        return None
    info = next(
        (c for c in created.connection_uris if c.database == database and c.role == role), None
    )
    pooled = info.pooled_uri if info is not None else None
    if info is None or pooled is None:
        return None
    return checked_handle(
        project_id, branch.id, branch.name, branch.parent_id, endpoint, str(info.uri), str(pooled),
        kind,
    )


async def handle_for(
    client: NeonClient,
    project_id: str,
    branch_id: str,
    *,
    database: str,
    role: str,
    kind: Kind = "session",
    name: str | None = None,
    parent_id: str | None = None,
) -> BranchHandle:
    """URLs for an existing branch, checked to point at that branch's own endpoint."""
    endpoint = writable_endpoint(await client.list_branch_endpoints(project_id, branch_id))
    if endpoint is None:
        raise NeonAPIError(f"branch {branch_id} has no endpoint", status=0)
    _check_endpoint_branch(endpoint, branch_id)
    await client.wait_for_endpoint(project_id, endpoint.id)
    direct, pooled = await client.connection_uris(
        project_id, branch_id=branch_id, endpoint_id=endpoint.id, database_name=database,
        role_name=role,
    )
    if name is None or parent_id is None:
        branch = await client.get_branch(project_id, branch_id)
        name, parent_id = branch.name, branch.parent_id
    return checked_handle(
        project_id, branch_id, name, parent_id, endpoint, str(direct), str(pooled), kind
    )


def writable_endpoint(endpoints: Iterable[Endpoint]) -> Endpoint | None:
    """The branch's read-write endpoint (any endpoint when it has none)."""
    listed = list(endpoints)
    return next((e for e in listed if e.type == "read_write"), listed[0] if listed else None)


def _check_endpoint_branch(endpoint: Endpoint, branch_id: str) -> None:
    if endpoint.branch_id != branch_id:
        raise SafetyError(
            f"endpoint {endpoint.id} belongs to branch {endpoint.branch_id}, not {branch_id}"
        )


def checked_handle(
    project_id: str,
    branch_id: str,
    name: str,
    parent_id: str | None,
    endpoint: Endpoint,
    direct: str,
    pooled: str,
    kind: Kind,
) -> BranchHandle:
    """The handle for URLs that name `endpoint`, which must be the branch's own; both
    URLs registered for scrubbing before anything can print them."""
    _check_endpoint_branch(endpoint, branch_id)
    verify_urls_point_at(
        endpoint_host=endpoint.host, endpoint_id=endpoint.id, direct=direct, pooled=pooled
    )
    register_url(direct)
    register_url(pooled)
    return BranchHandle(
        project_id=project_id,
        id=branch_id,
        name=name,
        parent_id=parent_id,
        endpoint_id=endpoint.id,
        direct_url=Secret(direct),
        pooled_url=Secret(pooled),
        kind=kind,
    )


async def delete_owned_branch(client: NeonClient, project_id: str, branch_id: str) -> bool:
    """Delete a harness branch; refuses anything else. True when it was deleted now."""
    try:
        branch = await client.get_branch(project_id, branch_id)
    except NeonAPIError as exc:
        if exc.status == 404:
            return False
        raise
    ensure_owned(branch, "delete")

    async def delete() -> bool:
        return await client.delete_branch(project_id, branch_id, wait=True, missing_ok=True)

    deleted = await _until_its_operation_holds(f"deleting {branch.name}", delete)
    log.info("deleted branch %s (%s)", branch.name, branch.id)
    return bool(deleted)


async def _until_its_operation_holds(
    what: str, act: Callable[[], Awaitable[T]], before_again: Callable[[], Awaitable[None]] | None = None
) -> T:
    """`act()`, asked again when the API accepted it but its operation failed (a platform
    hiccup), at most CREATE_ATTEMPTS times in all; `before_again` clears what a failed
    one left. An operation that timed out is not asked again: it may still finish."""
    from cathouse_harness.neon.client import NeonOperationError

    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return await act()
        except NeonOperationError as exc:
            if exc.timed_out or attempt == CREATE_ATTEMPTS:
                raise
            log.warning("%s failed (%s); trying again", what, exc.message)
            if before_again is not None:
                await before_again()
    raise AssertionError("unreachable: the last attempt returns or raises")


async def restore_owned_branch(
    client: NeonClient, project_id: str, branch_id: str
) -> None:
    """Reset a harness branch to its parent's current state."""
    branch = await client.get_branch(project_id, branch_id)
    ensure_owned(branch, "reset")
    if not branch.parent_id:
        root = ": a schema-only branch is a root branch" if MARK_PARENT in branch.annotation else ""
        raise SafetyError(f"branch {branch.name} ({branch.id}) has no parent to reset to{root}",
                          hint="delete it and create it again" if root else None)
    await client.restore_branch(project_id, branch_id, source_branch_id=branch.parent_id, wait=True)


async def extend_expiry(
    client: NeonClient, project_id: str, branch_ids: Iterable[str], ttl: timedelta
) -> None:
    """Push expires_at forward on the given harness branches (the heartbeat)."""
    until = expiry(ttl)
    for branch_id in branch_ids:
        try:
            await client.update_branch(project_id, branch_id, expires_at=until)
        except NeonAPIError as exc:
            if exc.status == 404:
                continue
            raise


async def harness_branches(
    client: NeonClient, project_id: str, *, run_id: str | None = None
) -> list[Branch]:
    """Every branch carrying the harness marks, optionally only those of one run."""
    branches = await client.list_branches(project_id, search=NAME_PREFIX)
    found = [b for b in branches if is_harness_branch(b)]
    if run_id is not None:
        found = [b for b in found if b.annotation.get(MARK_RUN) == run_id]
    return found


def is_expired(branch: Branch, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return branch.expires_at is not None and branch.expires_at <= now


async def delete_run_branches(
    client: NeonClient, project_id: str, run_id: str, *, keep: Iterable[str] = (),
    owner: str | None = None,
) -> list[str]:
    """Delete every session branch of `run_id` except `keep` (only `owner`'s, when
    given); returns the deleted ids."""
    kept = set(keep)
    deleted: list[str] = []
    for branch in await harness_branches(client, project_id, run_id=run_id):
        if branch.id in kept or branch.annotation.get(MARK_KIND) != "session":
            continue
        if owner is not None and not owned_here(branch, run_id, owner):
            continue
        if await delete_owned_branch(client, project_id, branch.id):
            deleted.append(branch.id)
    return deleted
