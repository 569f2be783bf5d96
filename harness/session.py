"""One test session's branch, from backend to teardown. The pytest plugin is a thin layer
over this; benchmarks and the reliability suite drive it directly.

Flow: connect to the backend → resolve the parent branch → find or build the migrated
template for the current migration fingerprint → fork this session's (or this xdist
worker's) branch from it → hand out URLs → delete the branch at the end. A watchdog
process deletes the branch if this process dies first.

Under xdist the controller's session does the setup once and forks every worker's
branch (`fork_worker`), and a worker's session is *prepared*: it receives its branch
through `harness.handoff` and opens the API only for resets and per-test branches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from harness.backend import BackendInfo, connect_backend, open_client
from harness.branches import (
    BranchHandle,
    create_owned_branch,
    delete_owned_branch,
    find_own_branch,
    harness_branches,
    resolve_parent,
    restore_owned_branch,
    session_branch_name,
)
from harness.errors import ConfigError, HarnessError
from harness.log import get_logger
from harness.runs import kept_ids, kept_marker, marker_dir, run_dir
from harness.settings import Settings
from harness.sync import LoopThread
from harness.watchdog import WatchdogHandle, start_watchdog

if TYPE_CHECKING:
    from harness.neon.client import NeonClient

log = get_logger("session")

Step = Literal["backend", "parent", "template", "migrate", "fork", "teardown", "reset"]


class SessionStepError(HarnessError):
    """A step of session setup failed; names the step and how to clean up."""

    def __init__(self, step: Step, cause: BaseException, *, cleanup: str | None = None) -> None:
        self.step = step
        # a configuration problem found during setup (a refused key, a wrong service
        # order) keeps its exit code 2 through the wrapping
        self.exit_code = cause.exit_code if isinstance(cause, HarnessError) else 1
        # one_line(), not message: the cause's hint says how to fix it
        detail = cause.one_line() if isinstance(cause, HarnessError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"cathouse-harness: {step} step failed: {detail}", hint=cleanup)


@dataclass
class SessionReport:
    backend: str = ""
    project_id: str = ""
    parent: str = ""
    template: str = ""
    template_reused: bool | None = None
    branches: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    delete_failed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    api_calls: int = 0
    api_retries: int = 0
    migrated_services: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class BranchSession:
    """Owns the branches of one test session: its own or, in an xdist controller, every
    worker's (`fork_worker`). A `prepared` session (an xdist worker's) receives its branch
    from the controller, which deletes it at the end of the run."""

    def __init__(
        self, settings: Settings, *, run_id: str, worker: str = "main", prepared: bool = False
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.worker = worker
        self.report = SessionReport(parent=settings.parent_branch)
        self.backend: BackendInfo | None = None
        self.handle: BranchHandle | None = None
        self.template_id: str | None = None
        # the xdist workers' branches this (controller's) session forked, by worker
        self.worker_branches: dict[str, BranchHandle] = {}
        # Bumped by reset(): a restore ends the branch's open connections, so anything
        # that keeps one (db_session on a long-lived loop) reconnects when it changes.
        self.resets = 0
        self.prepared = prepared
        self._fork_from: str | None = None  # set by setup(): what session branches fork from
        self._schema_only = False
        self._per_test = 0  # branches forked for single tests (fork_for_test)
        self._dropped: list[str] = []  # their ids, deleted without waiting
        self._loop: LoopThread | None = None
        self._client: NeonClient | None = None
        self._watchdog: WatchdogHandle | None = None
        self._lock = threading.Lock()  # a controller forks from several threads at once

    # -- setup ---------------------------------------------------------------------------

    def _timed(self, step: str, started: float, *, slowest: bool = False) -> None:
        took = time.perf_counter() - started
        with self._lock:
            before = self.report.timings.get(step, 0.0)
            # concurrent forks overlap: their sum would be no time anyone waited
            self.report.timings[step] = max(before, took) if slowest else before + took

    def _run(self, coro):  # type: ignore[no-untyped-def]
        assert self._loop is not None
        return self._loop.run(coro)

    @property
    def client(self) -> NeonClient:
        assert self._client is not None, "the session has not started"
        return self._client

    def start(self) -> BranchHandle:
        if self.handle is not None:
            return self.handle
        settings = self.settings
        if self.prepared:
            handle = self._receive()
        else:
            self.setup()
            handle = self._fork_session_branch(self.worker)
        if settings.migrating_services and not settings.template_reuse:
            started = time.perf_counter()
            try:
                self._migrate(handle)
            except Exception as exc:
                raise SessionStepError(
                    "migrate", exc, cleanup="the branch is deleted at teardown"
                ) from None
            self._timed("migrate", started)
        self.handle = handle
        return handle

    def setup(self) -> None:
        """What every fork needs, once: the backend, the parent, the watchdog and the
        template (built when missing)."""
        if self._fork_from is not None:
            return
        settings = self.settings
        self._connect()
        assert self.backend is not None
        started = time.perf_counter()
        with_template = bool(settings.migrating_services and settings.template_reuse)
        try:
            parent, listed = self._run(self._parent_and_listing(with_template))
        except ConfigError:
            raise  # names the setting and its source already
        except HarnessError as exc:
            raise SessionStepError(
                "parent", exc, cleanup=f"check parent_branch ({settings.source_of('parent_branch')})"
            ) from None
        self._timed("parent", started)

        self._start_watchdog()
        fork_from = parent.id
        if with_template:
            fork_from = self._template(parent, listed)
        self._schema_only = settings.schema_only and fork_from == parent.id
        self._fork_from = fork_from

    async def _parent_and_listing(self, with_template: bool):  # type: ignore[no-untyped-def]
        """The parent and, when a template is to be found, the project's harness branches:
        independent reads, sent together (on Neon one round trip instead of two). The
        parent's error comes first: it names the setting to fix."""
        assert self.backend is not None
        parent = resolve_parent(self.client, self.backend.project_id, self.settings)
        if not with_template:
            return await parent, None
        found, listed = await asyncio.gather(
            parent, harness_branches(self.client, self.backend.project_id), return_exceptions=True
        )
        if isinstance(found, BaseException):
            raise found
        if isinstance(listed, HarnessError):
            return found, None  # the template step lists again, and names its own error
        if isinstance(listed, BaseException):
            raise listed
        return found, listed

    def _connect(self) -> None:
        """The backend and its client, once (a prepared worker only when it needs the API)."""
        if self._client is not None:
            return
        started = time.perf_counter()
        try:
            self.backend = connect_backend(self.settings)
        except HarnessError as exc:
            raise SessionStepError("backend", exc) from None
        self.report.backend = self.backend.kind
        self.report.project_id = self.backend.project_id
        self._loop = LoopThread()
        self._client = self._run(self._open_client())
        self._timed("backend", started)

    def _receive(self) -> BranchHandle:
        from harness.handoff import handoff_dir, wait_for_branch

        started = time.perf_counter()
        prepared = wait_for_branch(handoff_dir(self.settings, self.run_id), self.worker)
        self.report.backend = prepared.backend
        self.report.project_id = prepared.handle.project_id
        self._timed("handoff", started)
        return prepared.handle

    def fork_worker(self, worker: str) -> BranchHandle:
        """In an xdist controller, after `setup`: fork `worker`'s branch. Several threads
        may call it at once; their creates run concurrently on the one client."""
        handle = self._fork_session_branch(worker)
        with self._lock:
            self.worker_branches[worker] = handle
        return handle

    def _fork_session_branch(self, worker: str) -> BranchHandle:
        assert self.backend is not None and self._watchdog is not None
        assert self._fork_from is not None, "setup() comes first"
        project_id = self.backend.project_id
        started = time.perf_counter()
        name = session_branch_name(self.run_id, worker)
        self._watchdog.record_name(project_id, name)
        try:
            handle = self._run(
                create_owned_branch(self.client, project_id, name=name, parent_id=self._fork_from,
                    ttl=self.settings.branch_ttl, kind="session", run_id=self.run_id,
                    database=self.settings.database, role=self.settings.role,
                    schema_only=self._schema_only,
                )
            )
        except BaseException as exc:
            self._cleanup_after_failed_create(name)
            if isinstance(exc, Exception):
                self._watchdog.forget_name(name)
            # after Ctrl-C the create may still land on the server: the name marker stays,
            # and the watchdog looks the name up again once this process is gone
            if not isinstance(exc, Exception):
                raise  # Ctrl-C stays an interruption (pytest's exit code 2), after cleanup
            raise SessionStepError(
                "fork", exc, cleanup=f"cathouse-branch gc --run {self.run_id}"
            ) from None
        self._watchdog.record(project_id, handle.id, handle.name)
        self._timed("fork", started, slowest=True)
        self.report.branches.append(f"{handle.name} ({handle.id})")
        return handle

    async def _open_client(self):  # type: ignore[no-untyped-def]
        assert self.backend is not None
        client = open_client(self.backend)
        return await client.__aenter__()

    def _template(self, parent, listed) -> str:  # type: ignore[no-untyped-def]
        # harness.fingerprint, not harness.migrations: a reused template needs no Alembic
        # or SQLAlchemy (~0.9 s of imports).
        from harness.fingerprint import migration_fingerprint
        from harness.templates import find_or_build_template

        assert self.backend is not None
        started = time.perf_counter()
        fingerprint = migration_fingerprint(self.settings)
        try:
            result = self._run(
                find_or_build_template(self.client, self.backend.project_id, parent=parent,
                    fingerprint=fingerprint, run_id=self.run_id,
                    database=self.settings.database, role=self.settings.role,
                    migrate=self._migrate, schema_only=self.settings.schema_only,
                    tracker=self._watchdog, listed=listed, prepare=_import_migrations,
                )
            )
        except HarnessError as exc:
            raise SessionStepError(
                "template", exc, cleanup="a half-built template is deleted automatically"
            ) from None
        self._timed("template", started)
        if result.migrate_seconds:
            self.report.timings["migrate"] = result.migrate_seconds
        self.report.template = f"{result.name} ({result.branch_id})"
        self.report.template_reused = result.reused
        self.template_id = result.branch_id
        return result.branch_id

    def _migrate(self, handle: BranchHandle) -> float:
        from harness.migrations import migrate_all

        started = time.perf_counter()
        results = migrate_all(self.settings, str(handle.direct_url))
        self.report.migrated_services = len(results)
        return time.perf_counter() - started

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        assert self.backend is not None
        directory = marker_dir(self.settings, self.run_id, self.worker)
        self._watchdog = start_watchdog(
            directory,
            api_host=self.backend.api_host,
            api_key=str(self.backend.api_key),
            ttl=self.settings.branch_ttl,
            log_file=self.settings.home / "logs" / "watchdog.log",
            run_id=self.run_id,
        )

    def _cleanup_after_failed_create(self, name: str) -> None:
        """A create that failed half-way may still have made the branch: find and remove it,
        if it is ours (a run given the same run id may own a branch of that name)."""
        assert self.backend is not None
        try:
            found = self._run(
                find_own_branch(self.client, self.backend.project_id, name, run_id=self.run_id)
            )
            if found is not None:
                self._run(delete_owned_branch(self.client, self.backend.project_id, found.id))
        except Exception as exc:
            log.warning("could not check for a half-created branch %s: %s", name, exc)

    # -- during the session ----------------------------------------------------------------

    def reset(self) -> None:
        """Restore this session's branch to its parent (the template)."""
        assert self.handle is not None
        self._connect()
        assert self.backend is not None
        started = time.perf_counter()
        self.resets += 1
        self._run(restore_owned_branch(self.client, self.backend.project_id, self.handle.id))
        self._timed("reset", started)

    def fork_for_test(self) -> BranchHandle:
        """A branch of its own for one test, forked from what this session's branch was
        forked from (the migrated template), for code that commits across connections."""
        assert self.handle is not None
        self._connect()
        self._start_watchdog()
        assert self.backend is not None and self._watchdog is not None
        project_id = self.backend.project_id
        self._per_test += 1
        name = f"{self.handle.name}/t{self._per_test}"
        started = time.perf_counter()
        self._watchdog.record_name(project_id, name)
        try:
            handle = self._run(
                create_owned_branch(self.client, project_id, name=name,
                    parent_id=self.handle.parent_id or self.handle.id, ttl=self.settings.branch_ttl,
                    kind="session", run_id=self.run_id, database=self.settings.database,
                    role=self.settings.role,
                )
            )
        except Exception:
            self._cleanup_after_failed_create(name)
            self._watchdog.forget_name(name)
            raise
        self._watchdog.record(project_id, handle.id, handle.name)
        self._timed("per-test fork", started)
        return handle

    def drop_test_branch(self, handle: BranchHandle) -> None:
        """Delete a branch of `fork_for_test` without waiting for the delete to finish:
        the next test need not wait for it. `finish` makes sure none is left."""
        assert self.backend is not None
        started = time.perf_counter()
        self._run(self.client.delete_branch(self.backend.project_id, handle.id, wait=False))
        self._dropped.append(handle.id)
        self._timed("per-test drop", started)

    async def _confirm_dropped(self) -> None:
        assert self.backend is not None
        project_id = self.backend.project_id
        left = {b.id for b in await harness_branches(self.client, project_id, run_id=self.run_id)}
        for branch_id in self._dropped:
            if branch_id in left:  # its delete failed after it was accepted: ask again
                await delete_owned_branch(self.client, project_id, branch_id)

    # -- teardown ------------------------------------------------------------------------

    def finish(self, *, keep: bool = False) -> None:
        """Delete what this session owns: its branch unless `keep` (a prepared one is the
        controller's to delete), and every worker's branch that its worker did not keep."""
        started = time.perf_counter()
        try:
            if self._dropped and self._watchdog is not None:
                self._run(self._confirm_dropped())
                for branch_id in self._dropped:
                    self._watchdog.forget(branch_id)
            doomed: list[BranchHandle] = []
            if self.handle is not None and keep:
                self._keep(self.handle)
            elif self.handle is not None and not self.prepared and self.backend is not None:
                doomed.append(self.handle)
            with self._lock:
                left, self.worker_branches = list(self.worker_branches.values()), {}
            doomed.extend(self._not_kept(left))
            failed = self._delete(doomed)
            for handle, _ in failed:
                self.report.delete_failed.append(f"{handle.name} ({handle.id})")
            if failed:
                raise _teardown_error(failed)
        finally:
            self._collect_stats()
            if self._watchdog is not None:
                self._watchdog.release()
            if self._client is not None and self._loop is not None:
                try:
                    self._run(self.client.aclose())
                except Exception:
                    pass
            if self._loop is not None:
                self._loop.close()
            self._timed("teardown", started)

    def _keep(self, handle: BranchHandle) -> None:
        if self._watchdog is not None:
            self._watchdog.forget(handle.id)
        kept_marker(self.settings, self.run_id, handle.id).write_text(handle.name)
        self.report.kept.append(f"{handle.name} ({handle.id})")

    def release_worker(self, worker: str) -> None:
        """In an xdist controller: `worker` is done, so delete its branch now, unless it
        kept it. A failed delete is tried again, and reported, by `finish`."""
        with self._lock:
            handle = self.worker_branches.pop(worker, None)
        if handle is None:  # not forked yet (its worker died waiting): finish deletes it
            return
        if self._delete(self._not_kept([handle])):
            with self._lock:
                self.worker_branches[worker] = handle

    def _not_kept(self, handles: list[BranchHandle]) -> list[BranchHandle]:
        """`handles` but those their workers keep (`runs.kept_marker`), which the
        watchdog forgets so that it leaves them too."""
        if not handles:
            return []
        kept = kept_ids(run_dir(self.settings, self.run_id))
        for handle in handles:
            if handle.id in kept and self._watchdog is not None:
                self._watchdog.forget(handle.id)
        return [handle for handle in handles if handle.id not in kept]

    def _delete(self, handles: list[BranchHandle]) -> list[tuple[BranchHandle, BaseException]]:
        """Ask for the deletion of `handles` (branches this session created) concurrently,
        without waiting for their operations: on Neon that is a second or more that no
        test and no user waits for. The watchdog confirms each delete once this process is
        gone (`WatchdogHandle.deleting`) and asks again if one failed; the branch's TTL is
        the last net. Returns those whose request failed, each with its error (their
        markers stay, so the watchdog deletes them)."""
        if not handles:
            return []
        assert self.backend is not None
        project_id = self.backend.project_id

        async def delete_all() -> list[bool | BaseException]:
            return await asyncio.gather(
                *(self.client.delete_branch(project_id, h.id, wait=False) for h in handles),
                return_exceptions=True,
            )

        failed: list[tuple[BranchHandle, BaseException]] = []
        for handle, outcome in zip(handles, self._run(delete_all()), strict=True):
            if isinstance(outcome, BaseException):
                failed.append((handle, outcome))
            elif self._watchdog is not None:
                self._watchdog.deleting(handle.id)
        return failed

    def _collect_stats(self) -> None:
        stats = getattr(self._client, "stats", None)
        if stats is not None:
            self.report.api_calls = int(getattr(stats, "calls", 0))
            self.report.api_retries = int(getattr(stats, "retries", 0))


def _import_migrations() -> None:
    # Alembic and SQLAlchemy, about 0.5 s of imports: a build does them while its branch
    # is being created instead of after
    import harness.migrations  # noqa: F401


def _teardown_error(failed: list[tuple[BranchHandle, BaseException]]) -> SessionStepError:
    """One line naming every branch left and the command that removes it."""
    handle, exc = failed[0]
    if len(failed) == 1:
        cleanup = (f"branch {handle.name} ({handle.id}) is left; remove it with: "
                   f"cathouse-branch down '{handle.name}'")
    else:
        left = ", ".join(f"{h.name} ({h.id})" for h, _ in failed)
        cleanup = f"branches {left} are left; remove each with: cathouse-branch down '<name>'"
    return SessionStepError("teardown", exc, cleanup=cleanup)
