"""A rehearsal's steps: fork a parent that holds data, migrate the fork while watching
each revision, diff its schema against the parent, and remove the fork again.

The steps are separate so that the caller (`cathouse-branch rehearse`) can remove the
fork whatever stops the run: a failed revision, a budget, Ctrl-C. Only the fork is ever
changed; the parent is read (forked from, compared against), never written.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cathouse_harness.branching import lifecycle as branches
from cathouse_harness.branching.names import NAME_PREFIX, clean_name_part, dev_branch_name
from cathouse_harness.errors import ConfigError, HarnessError, MigrationError, NeonAPIError
from cathouse_harness.rehearsal.watch import SAMPLE_INTERVAL, LockSampler, RevisionReport, RevisionWatcher

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.neon.client import NeonClient
    from cathouse_harness.neon.models import Branch
    from cathouse_harness.support.progress import Progress

REHEARSAL_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class Fork:
    """What a rehearsal forks: its parent, the point in time, and the fork's name and
    run id (known before the create, so a create cut short can still be found)."""

    parent: Branch
    at: datetime | None
    name: str
    run_id: str


def new_fork(parent: Branch, at: datetime | None) -> Fork:
    user = dev_branch_name().removeprefix(f"{NAME_PREFIX}dev/")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    suffix = secrets.token_hex(2)
    name = f"{NAME_PREFIX}rehearsal/{clean_name_part(user)}-{stamp}-{suffix}"
    return Fork(parent=parent, at=at, name=name, run_id=f"rehearsal-{stamp}-{suffix}")


async def find_parent(client: NeonClient, project_id: str, given: str | None) -> Branch:
    """The branch named by `--parent`, or the project's default branch."""
    if given:
        try:
            return await client.resolve_branch(project_id, given)
        except NeonAPIError as exc:
            if exc.status == 404:
                raise ConfigError(f"no branch {given!r} in project {project_id}", key="--parent",
                                  hint="name a branch by its name or br- id (cathouse-branch list "
                                  "shows the harness's; the console or neon CLI shows yours)") from None
            raise
    found = [b for b in await client.list_branches(project_id) if b.default]
    if not found:
        raise ConfigError(f"project {project_id} has no default branch", key="--parent",
                          hint="name the branch to fork with --parent")
    return found[0]


async def create_fork(client: NeonClient, project_id: str, settings: Settings, fork: Fork,
                      ttl: timedelta) -> branches.BranchHandle:
    """The fork: a marked harness branch of the parent (as it was at `fork.at`), with data."""
    return await branches.create_owned_branch(
        client, project_id, name=fork.name, parent_id=fork.parent.id, ttl=ttl,
        kind="rehearsal", run_id=fork.run_id, database=settings.database, role=settings.role,
        parent_timestamp=fork.at,
    )


async def remove_fork(client: NeonClient, project_id: str, fork: Fork, branch_id: str | None) -> bool:
    """Delete the fork; by name when its create was cut short before its id came back.
    The ownership gate (`delete_owned_branch`) stays in the way of anything else."""
    if branch_id is None:
        found = await branches.find_own_branch(client, project_id, fork.name, run_id=fork.run_id)
        if found is None:
            return False
        branch_id = found.id
    return await branches.delete_owned_branch(client, project_id, branch_id)


@dataclass(frozen=True)
class MigrationOutcome:
    revisions: list[RevisionReport]
    error: HarnessError | None = None


def rehearse_migrations(settings: Settings, direct_url: str, *,
                        interval: float = SAMPLE_INTERVAL,
                        progress: Progress | None = None) -> MigrationOutcome:
    """Every service's pending revisions on the fork, in order, each measured
    (`rehearsal.watch`). A failed revision ends the run and is the outcome's last
    report, with its SQLSTATE; Ctrl-C propagates (the caller removes the fork)."""
    from cathouse_harness.migrate.all_services import migrate_all
    from cathouse_harness.migrate.connection import sqlstate_of
    from cathouse_harness.migrate.environment import watching_steps

    with LockSampler(direct_url, interval) as sampler:
        watcher = RevisionWatcher(sampler)
        try:
            with watching_steps(watcher):
                migrate_all(settings, direct_url, progress=progress)
        except MigrationError as exc:
            watcher.failed(exc.db_error or exc.message, sqlstate_of(exc))
            return MigrationOutcome(watcher.reports, exc)
    return MigrationOutcome(watcher.reports)


@dataclass(frozen=True)
class Budget:
    """`--max-lock` (the longest hold of a lock that blocks writes) and `--max-duration`
    (the longest revision), in seconds; None: no limit."""

    max_lock: float | None = None
    max_duration: float | None = None

    def exceeded(self, revisions: list[RevisionReport]) -> list[str]:
        found = []
        for report in revisions:
            where = f"{report.service} {report.revision}"
            if self.max_duration is not None and report.seconds > self.max_duration:
                found.append(f"{where} took {report.seconds:.2f} s (--max-duration "
                             f"{self.max_duration:g} s)")
            longest = report.longest()
            if self.max_lock is not None and longest is not None and longest.seconds > self.max_lock:
                found.append(f"{where} held {mode_name(longest.mode)} on {longest.target} for "
                             f"{'' if longest.exact else 'up to '}{longest.seconds:.2f} s "
                             f"(--max-lock {self.max_lock:g} s)")
        return found


def mode_name(mode: str) -> str:
    """`AccessExclusiveLock` -> `ACCESS EXCLUSIVE`, as PostgreSQL's documentation names it."""
    words: list[str] = []
    for char in mode.removesuffix("Lock"):
        if char.isupper() and words:
            words.append(" ")
        words.append(char.upper())
    return "".join(words)


@dataclass(frozen=True)
class Rehearsal:
    """The whole report: what was forked, each revision, the diff, what went wrong."""

    parent: Branch
    at: datetime | None
    fork_id: str
    fork_name: str
    kept: bool
    revisions: list[RevisionReport]
    diff: str
    error: str | None = None
    over_budget: list[str] = field(default_factory=list)
    interval: float = SAMPLE_INTERVAL

    def as_dict(self) -> dict[str, Any]:
        return {
            "parent": {"id": self.parent.id, "name": self.parent.name,
                       "at": self.at.isoformat() if self.at else None},
            "fork": {"id": self.fork_id, "name": self.fork_name, "kept": self.kept},
            "lock_sampling": {"method": "pg_locks", "interval_seconds": self.interval},
            "revisions": [r.as_dict() for r in self.revisions],
            "schema_diff": self.diff,
            "error": self.error,
            "over_budget": self.over_budget,
            "ok": self.error is None and not self.over_budget,
        }

    def lines(self) -> list[str]:
        at = f" as of {self.at.isoformat()}" if self.at else ""
        head = [f"rehearsal on {self.fork_name} ({self.fork_id}), a fork of {self.parent.name} "
                f"({self.parent.id}){at}"]
        if not self.revisions and self.error is None:
            head.append("nothing to migrate: every service is at its target on the parent")
        for report in self.revisions:
            head += revision_lines(report)
        head.append(f"locks sampled from pg_locks every {self.interval * 1000:g} ms; "
                    "≤ marks a lock no sample saw (held under that long)")
        if self.diff:
            head += [f"schema diff against {self.parent.name}:", *self.diff.rstrip("\n").splitlines()]
        else:
            head.append(f"schema diff against {self.parent.name}: none")
        head += [f"over budget: {line}" for line in self.over_budget]
        return head


def _seconds(lock_seconds: float, exact: bool) -> str:
    return f"{'' if exact else '≤'}{lock_seconds:.2f} s"


def revision_lines(report: RevisionReport) -> list[str]:
    """`auth-service 8b4e6d0a5c21 (users: is_active …)  1.92 s  rows 0  …`, then its locks."""
    doc = f" ({report.doc})" if report.doc else ""
    if report.error is not None:
        state = f" SQLSTATE {report.sqlstate}" if report.sqlstate else ""
        return [f"{report.service} {report.revision}{doc}  FAILED after {report.seconds:.2f} s"
                f"{state}: {report.error}"]
    longest = report.longest()
    blocking = (f"longest blocking lock {mode_name(longest.mode)} on {longest.target} "
                f"{_seconds(longest.seconds, longest.exact)}") if longest else "no blocking lock"
    lines = [f"{report.service} {report.revision}{doc}  {report.seconds:.2f} s  "
             f"rows {report.rows_total}  {blocking}"]
    # the version table's bookkeeping and what the revision itself created (nobody else
    # could wait on those) are in --json's list only
    shown = [lock for lock in report.locks
             if not lock.new and ".alembic_version" not in lock.target]
    if shown:
        lines.append("  locks: " + ", ".join(
            f"{mode_name(lock.mode)} {lock.target} {_seconds(lock.seconds, lock.exact)}"
            for lock in shown
        ))
    if report.rows:
        lines.append("  rows: " + ", ".join(f"{name} {count}" for name, count in sorted(report.rows.items())))
    return lines
