"""The migrated template branch: built once per migration fingerprint, forked by sessions.

Runs on different machines share nothing but the Neon project, so the protocol uses
branch names only. A builder creates `<template>.building`; after creating it, it looks
for other builders of the same name and the oldest one wins (the others delete their
own and wait). The winner migrates and then renames its branch to the template name,
which is the signal that the template is ready. A building branch whose builder died is
recognised by its age and removed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cathouse_harness.branching.lifecycle import (
    BranchHandle,
    building_name,
    create_owned_branch,
    delete_owned_branch,
    harness_branches,
    made_from,
    template_branch_name,
)
from cathouse_harness.errors import HarnessError, NeonAPIError
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until_async
from cathouse_harness.support.progress import Progress, tell

if TYPE_CHECKING:
    from cathouse_harness.neon.client import NeonClient
    from cathouse_harness.neon.models import Branch

log = get_logger("templates")

TEMPLATE_TTL = timedelta(days=7)  # a build's expiry
STALE_BUILD = timedelta(minutes=10)
# `gc` removes a template of other migrations once no session has forked it for this long
TEMPLATE_IDLE = timedelta(days=1)


def last_used(template: Branch) -> datetime | None:
    """When `template` was last known in use. A ready template has no expiry (Neon
    refuses children of a branch that expires, and sessions are its children), so no
    reuse can be recorded on it: it counts from becoming ready (its last update, the
    rename). One built by an older harness still has an expiry, which each reuse pushed
    to now + TEMPLATE_TTL."""
    if template.expires_at is None:
        return template.updated_at or template.created_at
    return template.expires_at - TEMPLATE_TTL


class Tracker(Protocol):
    """Records branches for the watchdog while they are being built (WatchdogHandle)."""

    def record_name(self, project_id: str, name: str) -> None: ...

    def record(self, project_id: str, branch_id: str, name: str) -> None: ...

    def forget(self, branch_id: str) -> None: ...

    def forget_name(self, name: str) -> None: ...


@dataclass(frozen=True)
class TemplateResult:
    branch_id: str
    name: str
    reused: bool
    build_seconds: float
    migrate_seconds: float


def _oldest(branches: list[Branch]) -> Branch:
    return min(branches, key=lambda b: (b.created_at or datetime.max.replace(tzinfo=UTC), b.id))


# between looks at a build in progress: 0.05 s, then half as long again each time, at most 1 s
LOOK_AGAIN = Backoff(0.05, most=1.0, growth=1.5)


async def find_or_build_template(
    client: NeonClient,
    project_id: str,
    *,
    parent: Branch,
    fingerprint: str,
    run_id: str,
    database: str,
    role: str,
    migrate: Callable[[BranchHandle], float],
    schema_only: bool = False,
    wait_timeout: float = 600.0,
    tracker: Tracker | None = None,
    listed: list[Branch] | None = None,
    prepare: Callable[[], object] | None = None,
    progress: Progress | None = None,
) -> TemplateResult:
    """Return the ready template for `fingerprint`, building it if nobody has.

    `migrate` runs in a worker thread with the building branch's handle and returns the
    seconds it spent; it raises to abort the build (the building branch is then deleted).
    `listed`: the project's harness branches, when the caller already asked for them
    (with the parent's lookup: one round trip for both). `prepare` runs in a thread while
    a build waits for its branch (e.g. the migrations' imports). `progress` hears whether
    it builds or waits for another run's build.
    """
    name = template_branch_name(fingerprint, parent.name, schema_only=schema_only)
    builder = _Builder(
        client, project_id, parent=parent, name=name, fingerprint=fingerprint, run_id=run_id,
        database=database, role=role, migrate=migrate, schema_only=schema_only,
        tracker=tracker, prepare=prepare, progress=progress,
    )
    found: list[TemplateResult] = []

    async def look() -> bool:
        nonlocal listed
        branches = listed if listed is not None else await harness_branches(client, project_id)
        listed = None  # the next look asks again
        result = await builder.look(branches)
        if result is not None:
            found.append(result)
        return result is not None

    if not await wait_until_async(look, timeout=wait_timeout, backoff=LOOK_AGAIN):
        raise HarnessError(
            f"timed out after {wait_timeout:.0f} s waiting for template {name} to be built",
            hint=f"if no other run is building it, delete branch {builder.building}",
        )
    return found[0]


@dataclass
class _Builder:
    """One session's search for its template, and its build when nobody else builds it.

    `migrate` and `prepare` are blocking calls, run in threads (`asyncio.to_thread`):
    that is not a second sync-to-async bridge (`cathouse_harness.support.sync` is the one) but the other
    direction, the loop handing blocking work off so that it keeps serving the API calls
    that overlap it (the look for rival builders, the branch's create).
    """

    client: NeonClient
    project_id: str
    parent: Branch
    name: str
    fingerprint: str
    run_id: str
    database: str
    role: str
    migrate: Callable[[BranchHandle], float]
    schema_only: bool
    tracker: Tracker | None
    prepare: Callable[[], object] | None
    progress: Progress | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def building(self) -> str:
        return building_name(self.name)

    async def look(self, listed: list[Branch]) -> TemplateResult | None:
        """One look at `listed`: the ready template, or the one this session built; None
        while another run builds it (or won the race to)."""
        candidates = [b for b in listed if b.name in (self.name, self.building)]
        # a schema-only template is a root branch: its parent is in its annotation
        ready = [b for b in candidates if b.name == self.name and made_from(b) == self.parent.id]
        if ready:
            template = _oldest(ready)
            if template.expires_at is not None:
                await _keep(self.client, self.project_id, template)
            return TemplateResult(
                template.id, template.name, True, time.perf_counter() - self.started, 0.0
            )
        builders = [b for b in candidates if b.name == self.building]
        now = datetime.now(UTC)
        stale = [b for b in builders if b.created_at and now - b.created_at > STALE_BUILD]
        for branch in stale:
            log.warning("removing abandoned template build %s (%s)", branch.name, branch.id)
            await delete_owned_branch(self.client, self.project_id, branch.id)
        if any(b not in stale for b in builders):
            tell(self.progress, f"waiting for another run to build {self.name}")
            return None
        return await self.build()

    async def build(self) -> TemplateResult | None:
        """Build the template; None when another builder won the race.

        While it is being built the branch is tracked by the watchdog, so a run killed
        mid-build leaves no half-migrated template behind. What can overlap does:
        `prepare` with the create (on Neon a second or more), the look for rival builders
        with the migration.
        """
        tracker = self.tracker
        tell(self.progress, f"building {self.name}")
        if tracker:
            tracker.record_name(self.project_id, self.building)
        prepared = asyncio.create_task(_quietly(self.prepare)) if self.prepare else None
        try:
            handle = await create_owned_branch(
                self.client, self.project_id, name=self.building, parent_id=self.parent.id,
                ttl=TEMPLATE_TTL, kind="template", run_id=self.run_id, database=self.database,
                role=self.role, fingerprint=self.fingerprint, schema_only=self.schema_only,
            )
        except NeonAPIError as exc:
            if exc.status != 409:
                raise
            # A backend that refuses duplicate names (the local server) tells us here that
            # another run started building first: wait for it like any other loser.
            if tracker:
                tracker.forget_name(self.building)
            log.info("another run is building %s; waiting for it", self.name)
            return None
        if tracker:
            tracker.record(self.project_id, handle.id, self.building)
        if prepared is not None:
            await prepared
        migrate_seconds = await self._migrate_unless_beaten(handle)
        if migrate_seconds is None:
            return None
        # Ready: its expiry goes, as Neon refuses children of a branch that expires (and
        # sessions are its children). `gc` removes templates nobody uses any more.
        await self.client.update_branch(self.project_id, handle.id, name=self.name, expires_at=None)
        if tracker:
            tracker.forget(handle.id)
        log.info("template %s (%s) is ready", self.name, handle.id)
        return TemplateResult(
            handle.id, self.name, False, time.perf_counter() - self.started, migrate_seconds
        )

    async def _migrate_unless_beaten(self, handle: BranchHandle) -> float | None:
        """Migrate the building branch, asking meanwhile (a round trip off the critical
        path) whether another builder came first; the seconds migrating, or None when one
        did (this branch, migrated or not, is then deleted)."""
        migration = asyncio.create_task(asyncio.to_thread(self.migrate, handle))
        try:
            listed = await harness_branches(self.client, self.project_id)
            rivals = [b for b in listed if b.name == self.building]
            lost = bool(rivals) and _oldest(rivals).id != handle.id
            if lost:
                log.info("another run is building %s; waiting for it", self.name)
                await asyncio.gather(migration, return_exceptions=True)
            migrate_seconds = None if lost else await migration
        except BaseException:
            migration.cancel()  # as before: the branch goes, whatever its thread still does
            await asyncio.shield(delete_owned_branch(self.client, self.project_id, handle.id))
            self._forget(handle)
            raise
        if migrate_seconds is None:
            await delete_owned_branch(self.client, self.project_id, handle.id)
            self._forget(handle)
        return migrate_seconds

    def _forget(self, handle: BranchHandle) -> None:
        if self.tracker:
            self.tracker.forget(handle.id)


async def _quietly(prepare: Callable[[], object]) -> None:
    """`prepare` in a thread; what it raises is left for the step that needs it to meet."""
    try:
        await asyncio.to_thread(prepare)
    except Exception as exc:
        log.debug("preparing for the migration failed: %s", exc)


async def _keep(client: NeonClient, project_id: str, template: Branch) -> None:
    """Remove the expiry of a template made by an older harness, which set one (Neon
    refuses to branch from a branch that expires)."""
    try:
        await client.update_branch(project_id, template.id, expires_at=None)
    except NeonAPIError as exc:
        if exc.status not in (400, 404, 409, 422):
            raise
        log.warning("cannot remove the expiry of template %s: %s", template.name, exc.message)

