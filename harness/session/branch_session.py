"""One test session's branch, from backend to teardown. The pytest plugin is a thin layer
over this; benchmarks and the reliability suite drive it directly.

Flow: connect to the backend → resolve the parent branch → find or build the migrated
template for the current migration fingerprint → fork this session's (or this xdist
worker's) branch from it → hand out URLs → delete the branch at the end. A watchdog
process deletes the branch if this process dies first.

Under xdist the controller's session does the setup once, forks one branch for the
run's workers and copies a database of its own for each (`fork_worker`,
`cathouse_harness.xdist.worker_databases`); a worker's session is *prepared*: it receives its branch
and database through `cathouse_harness.xdist.handoff` and opens the API only for per-test branches.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cathouse_harness.branching.lifecycle import (
    BranchHandle,
    create_owned_branch,
    delete_owned_branch,
    find_own_branch,
    harness_branches,
    resolve_parent,
    restore_owned_branch,
    session_branch_name,
    taken_by_another,
)
from cathouse_harness.branching.names import owners_name
from cathouse_harness.cleanup.runs import kept_ids, kept_marker, marker_dir, owner_token, run_dir
from cathouse_harness.cleanup.watchdog import WatchdogHandle, start_watchdog
from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import ConfigError, HarnessError, NeonAPIError
from cathouse_harness.migrate.run_memo import once_per_run
from cathouse_harness.neon.backend import BackendInfo, connect_backend, open_client
from cathouse_harness.session.report import SessionReport as SessionReport
from cathouse_harness.session.report import SessionStepError as SessionStepError
from cathouse_harness.session.report import root_branch_refusal, teardown_error
from cathouse_harness.session.spare_claim import SessionSpares
from cathouse_harness.support.interrupt import stop_all
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.progress import Progress, tell
from cathouse_harness.support.sync import LoopThread
from cathouse_harness.xdist.worker_databases import (
    SharedBranch,
    copy_lock,
    copy_template,
    worker_database_name,
    worker_handle,
)

if TYPE_CHECKING:
    from cathouse_harness.neon.client import NeonClient

log = get_logger("session")

class BranchSession:
    """Owns the branches of one test session: its own or, in an xdist controller, every
    worker's (`fork_worker`). A `prepared` session (an xdist worker's) receives its branch
    from the controller, which deletes it at the end of the run. A session made before
    its process has imported the project's code migrates `apart`, in a process of its own
    (`cathouse_harness.migrate.in_child` says why)."""

    def __init__(
        self, settings: Settings, *, run_id: str, worker: str = "main", prepared: bool = False,
        apart: bool = False, progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.apart = apart
        # told what the setup waits for (server start, template build, fork, copy)
        self.progress = progress
        self.run_id = run_id
        self.worker = worker
        self.report = SessionReport(parent=settings.parent_branch)
        self.backend: BackendInfo | None = None
        self.handle: BranchHandle | None = None
        self.template_id: str | None = None
        # the xdist workers' databases this (controller's) session made, by worker, all
        # on one branch for the run's workers (`cathouse_harness.xdist.worker_databases`)
        self.worker_branches: dict[str, BranchHandle] = {}
        self._shared = SharedBranch(lambda: self._fork_session_branch("workers"))
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
        # the spare branch this machine keeps for the next session (branching.spares)
        self._spares = SessionSpares(self)
        self._spare: BranchHandle | None = None  # claimed in setup, used by the first fork
        self._interrupted = threading.Event()

    # -- setup ---------------------------------------------------------------------------

    def _timed(self, step: str, started: float, *, slowest: bool = False) -> None:
        took = time.perf_counter() - started
        with self._lock:
            before = self.report.timings.get(step, 0.0)
            # concurrent forks overlap: their sum would be no time anyone waited
            self.report.timings[step] = max(before, took) if slowest else before + took

    def _run(self, coro):  # type: ignore[no-untyped-def]
        assert self._loop is not None
        try:
            return self._loop.run(coro)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.interrupt()
            raise

    def interrupt(self) -> None:
        """Ctrl-C, or nobody waits for the setup any more: the migration running in a
        thread of ours stops now instead of at the end of its statement, so that the
        half-built branch is deleted and the process exits at once; a step that has
        not begun yet does not (`_say`)."""
        self._interrupted.set()
        stop_all()

    def _submit(self, coro):  # type: ignore[no-untyped-def]
        """`coro` on the session's loop, not waited for (what no test needs to wait for)."""
        assert self._loop is not None
        return self._loop.submit(coro)

    @property
    def refill_process(self):  # type: ignore[no-untyped-def]
        """The child making the next session's spare (None: none started), for tests."""
        return self._spares.started_refill()

    @property
    def client(self) -> NeonClient:
        assert self._client is not None, "the session has not started"
        return self._client

    def start(self) -> BranchHandle:
        if self.handle is not None:
            return self.handle
        settings = self.settings
        try:
            if self.prepared:
                self._say("waiting for this worker's database from the xdist controller")
                handle = self._receive()
            else:
                self.setup()
                handle = self._fork_session_branch(self.worker)
            if settings.migrates_or_seeds and not settings.template_reuse:
                started = time.perf_counter()
                try:
                    self._migrate(handle)
                except Exception as exc:
                    raise SessionStepError(
                        "migrate", exc, cleanup="the branch is deleted at teardown"
                    ) from None
                self._timed("migrate", started)
        finally:
            self._say(None)
        self.handle = handle
        return handle

    def _say(self, text: str | None) -> None:
        """Tell the progress that a step begins; every step of the setup says so first,
        which makes this the place where an interrupted setup stops going on (a Ctrl-C
        during the server's start found nothing to cancel, and the template's build
        and migration would otherwise follow). What was made is deleted by `finish`."""
        if text is not None and self._interrupted.is_set():
            raise KeyboardInterrupt
        tell(self.progress, text)

    def setup(self) -> None:
        """What every fork needs, once: the backend, the parent, the watchdog and the
        template (built when missing). The fingerprint and the template's migration read
        each service's Alembic setup once between them (`cathouse_harness.migrate.run_memo`)."""
        if self._fork_from is not None:
            return
        with once_per_run():
            self._setup()

    def _setup(self) -> None:
        settings = self.settings
        self._connect()
        assert self.backend is not None
        started = time.perf_counter()
        with_template = settings.migrates_or_seeds and settings.template_reuse
        fingerprint = self._fingerprint() if with_template else None
        spare = self._claim_spare(fingerprint)
        self._say(f"looking up the parent branch {settings.parent_branch}")
        try:
            parent, listed, spare_parts = self._run(self._parent_and_listing(with_template, spare))
        except ConfigError:
            raise  # names the setting and its source already
        except HarnessError as exc:
            # parent_branch is the fix only when the API answered; with no answer at all
            # the backend is what to look at
            unreachable = isinstance(exc, NeonAPIError) and exc.status == 0
            cleanup = (
                f"check that the API at {self.backend.api_host} is reachable"
                if unreachable
                else f"check parent_branch ({settings.source_of('parent_branch')})"
            )
            raise SessionStepError("parent", exc, cleanup=cleanup) from None
        self._timed("parent", started)

        fork_from = parent.id
        if with_template:
            assert fingerprint is not None
            fork_from = self._template(parent, listed, fingerprint)
            if spare is not None:
                self._spare = self._spares.adopt(spare, spare_parts, listed, fork_from, fingerprint)
            self._spares.slot_for(fingerprint, fork_from)
        self._schema_only = settings.schema_only and fork_from == parent.id
        self._fork_from = fork_from

    def _fingerprint(self) -> str:
        # branching.fingerprint, not migrate.all_services: a reused template needs no
        # Alembic or SQLAlchemy (~0.9 s of imports).
        from cathouse_harness.branching.fingerprint import migration_fingerprint

        return migration_fingerprint(self.settings)

    def _claim_spare(self, fingerprint: str | None):  # type: ignore[no-untyped-def]
        """This machine's spare fork of the template, taken before the first round trip so
        that its URIs come back with the parent's lookup (`SessionSpares.claim`)."""
        if fingerprint is None or not self.settings.spare:
            return None
        return self._spares.claim(fingerprint, self._watching)

    async def _parent_and_listing(self, with_template: bool, spare=None):  # type: ignore[no-untyped-def]
        """The parent and, when a template is to be found, the project's harness branches
        (and a claimed spare's endpoint and URIs): independent reads, sent together (on
        Neon one round trip instead of two or three). The parent's error comes first: it
        names the setting to fix; the spare's only costs the spare."""
        assert self.backend is not None
        parent = resolve_parent(self.client, self.backend.project_id, self.settings)
        if not with_template:
            return await parent, None, None
        outcomes: list[Any] = list(await asyncio.gather(
            parent, harness_branches(self.client, self.backend.project_id),
            self._spares.parts(self.client, spare), return_exceptions=True,
        ))
        found, listed, parts = outcomes
        if isinstance(found, BaseException):
            raise found
        for outcome in (listed, parts):  # Ctrl-C, cancellation, a bug: as they came
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
        if isinstance(listed, HarnessError):
            listed = None  # the template step lists again, and names its own error
        elif isinstance(listed, BaseException):
            raise listed
        return found, listed, parts

    def _connect(self) -> None:
        """The backend and its client, once (a prepared worker only when it needs the API)."""
        if self._client is not None:
            return
        started = time.perf_counter()
        self._say("starting the embedded server" if self.settings.backend == "embedded"
                  else "connecting to Neon")
        try:
            self.backend = connect_backend(self.settings)
        except HarnessError as exc:
            raise SessionStepError("backend", exc) from None
        self.report.backend = self.backend.kind
        self.report.pooler_gap = self.backend.pooler_gap or ""
        self.report.project_id = self.backend.project_id
        self._loop = LoopThread()
        self._client = self._run(self._open_client())
        self._timed("backend", started)

    def _receive(self) -> BranchHandle:
        from cathouse_harness.xdist.handoff import handoff_dir, wait_for_branch

        started = time.perf_counter()
        prepared = wait_for_branch(handoff_dir(self.settings, self.run_id), self.worker)
        self.report.backend = prepared.backend
        self.report.project_id = prepared.handle.project_id
        self._timed("handoff", started)
        return prepared.handle

    def fork_worker(self, worker: str) -> BranchHandle:
        """In an xdist controller, after `setup`: `worker`'s own database, a copy of the
        migrated one on the branch the run's workers share (forked by the first call),
        or with `worker_isolation = "branch"` a branch of its own. Several threads may
        call it at once."""
        if self.settings.worker_isolation == "branch":
            handle = self._fork_session_branch(worker)
        else:
            shared = self._shared.get()
            started = time.perf_counter()
            database = worker_database_name(self.settings.database, worker)
            self._say(f"copying the migrated database for {worker}")
            copy_template(shared.direct_url, self.settings.database, database,
                copy_lock(self.settings, self.run_id),
            )
            handle = worker_handle(shared, database)
            self._timed("worker database", started, slowest=True)
        with self._lock:
            self.worker_branches[worker] = handle
        return handle

    def _fork_session_branch(self, worker: str) -> BranchHandle:
        assert self.backend is not None
        assert self._fork_from is not None, "setup() comes first"
        started = time.perf_counter()
        name = session_branch_name(self.run_id, worker)
        spare, self._spare = self._spare, None
        if spare is not None:  # claimed in setup: renamed to `name` behind the session
            handle = self._spares.use(spare, name, self.run_id)
            self._timed("fork", started, slowest=True)
            self.report.branches.append(f"{handle.name} ({handle.id})")
            self.report.spare = "claimed"
            self._spares.refill()
            return handle
        self._say(f"forking {name}")
        try:
            handle = self._create_session_branch(
                name, self._fork_from,
                schema_only=self._schema_only,
            )
        except Exception as exc:  # Ctrl-C stays an interruption (pytest's exit code 2)
            raise SessionStepError(
                "fork", exc, cleanup=f"cathouse-branch gc --run {self.run_id}"
            ) from None
        self._timed("fork", started, slowest=True)
        self.report.branches.append(f"{handle.name} ({handle.id})")
        self._spares.refill()
        return handle

    def _create_session_branch(
        self, name: str, parent_id: str, *, schema_only: bool = False
    ) -> BranchHandle:
        """A session branch named `name`; when another run given the same run id holds that
        name, the branch is made under `name` with this run's owner suffix instead, so both
        runs go on. The watchdog knows each name before its create is asked for."""
        assert self.backend is not None
        project_id = self.backend.project_id
        watchdog = self._watching()
        for candidate in (name, owners_name(name, owner_token())):
            watchdog.record_name(project_id, candidate)
            try:
                handle = self._run(
                    create_owned_branch(self.client, project_id, name=candidate,
                        parent_id=parent_id, ttl=self.settings.branch_ttl, kind="session",
                        run_id=self.run_id, database=self.settings.database,
                        role=self.settings.role, schema_only=schema_only,
                    )
                )
            except BaseException as exc:
                self._cleanup_after_failed_create(candidate)
                # after Ctrl-C the create may still land on the server: the name marker
                # stays, and the watchdog looks the name up again once this process is gone
                if not isinstance(exc, Exception):
                    raise
                watchdog.forget_name(candidate)
                if candidate == name and isinstance(exc, NeonAPIError) and self._run(
                    taken_by_another(self.client, project_id, name, exc, run_id=self.run_id)
                ):
                    log.info("%s is another run's (same run id): forking under this run's suffix", name)
                    continue
                raise
            watchdog.record(project_id, handle.id, handle.name)
            return handle
        raise AssertionError("unreachable: the last name returns or raises")

    async def _open_client(self):  # type: ignore[no-untyped-def]
        assert self.backend is not None
        client = open_client(self.backend)
        return await client.__aenter__()

    def _template(self, parent, listed, fingerprint: str) -> str:  # type: ignore[no-untyped-def]
        from cathouse_harness.branching.templates import find_or_build_template

        assert self.backend is not None
        started = time.perf_counter()
        # the migration runs in a thread of the loop's; it sees this run's memo through
        # this context (a task's context is the loop thread's, not the caller's)
        context = contextvars.copy_context()
        tracker = self._watching()
        try:
            result = self._run(
                find_or_build_template(self.client, self.backend.project_id, parent=parent,
                    fingerprint=fingerprint, run_id=self.run_id,
                    database=self.settings.database, role=self.settings.role,
                    migrate=lambda handle: context.run(self._migrate, handle),
                    schema_only=self.settings.schema_only, tracker=tracker, listed=listed,
                    prepare=_import_migrations, progress=self.progress,
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
        started = time.perf_counter()
        if self.apart:
            from cathouse_harness.migrate.in_child import migrate_in_child

            tell(self.progress, "migrating every service (in a process of its own)")
            results = migrate_in_child(self.settings, str(handle.direct_url), self.progress, seed=True)
        else:
            from cathouse_harness.migrate.all_services import migrate_all

            results = migrate_all(self.settings, str(handle.direct_url), progress=self.progress,
                                  seed=True)
        self.report.migrated_services = len(results)
        return time.perf_counter() - started

    def _watching(self) -> WatchdogHandle:
        """The watchdog, started by whatever first creates a branch (the template's build,
        a session's or a single test's fork): the one place it starts."""
        assert self.backend is not None
        with self._lock:  # a controller's first forks may come from several threads at once
            if self._watchdog is None:
                self._watchdog = start_watchdog(
                    marker_dir(self.settings, self.run_id, self.worker),
                    api_host=self.backend.api_host,
                    api_key=str(self.backend.api_key),
                    ttl=self.settings.branch_ttl,
                    log_file=self.settings.home / "logs" / "watchdog.log",
                    run_id=self.run_id,
                )
            return self._watchdog

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
        """Restore this session's branch to its parent (the template); an xdist worker's
        database, to a new copy of its branch's own."""
        assert self.handle is not None
        self._refuse_without_parent("reset")
        if self.handle.database is None:
            self._connect()
        started = time.perf_counter()
        self.resets += 1
        if self.handle.database is not None:
            copy_template(self.handle.direct_url, self.settings.database, self.handle.database,
                copy_lock(self.settings, self.run_id), replace=True,
            )
        else:
            assert self.backend is not None
            self._run(restore_owned_branch(self.client, self.backend.project_id, self.handle.id))
        self._timed("reset", started)

    def fork_for_test(self) -> BranchHandle:
        """A branch of its own for one test, forked from what this session's branch was
        forked from (the migrated template), for code that commits across connections."""
        assert self.handle is not None
        self._refuse_without_parent("fork a branch per test from")
        self._connect()
        assert self.backend is not None
        self._per_test += 1
        # named after this process's session, not its branch: xdist workers share one
        name = f"{session_branch_name(self.run_id, self.worker)}/t{self._per_test}"
        started = time.perf_counter()
        handle = self._create_session_branch(name, self.handle.parent_id or self.handle.id)
        self._timed("per-test fork", started)
        return handle

    def _refuse_without_parent(self, action: str) -> None:
        assert self.handle is not None
        if self.handle.parent_id is None:
            raise root_branch_refusal(action, self.handle.name, self.settings)

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
            renamed = self._spares.settle()
            if renamed and self.handle is not None and renamed != self.handle.name:
                self.handle = replace(self.handle, name=renamed)
            if self._dropped and self._watchdog is not None:
                self._run(self._confirm_dropped())
                for branch_id in self._dropped:
                    self._watchdog.forget(branch_id)
            doomed: list[BranchHandle] = []
            if self.handle is not None and keep:
                self._keep(self.handle)
            elif self.handle is not None and not self.prepared and self.backend is not None:
                doomed.append(self.handle)
            if self._spare is not None:  # claimed, but the session ended before its fork
                doomed.append(self._spare)
                self._spare = None
            with self._lock:
                own = [h for h in self.worker_branches.values() if h.database is None]
                self.worker_branches = {}
            if self._shared.handle is not None:  # unless a worker kept its database on it
                own.append(self._shared.handle)
            doomed.extend(self._not_kept(own))
            failed = self._delete(doomed)
            for handle, _ in failed:
                self.report.delete_failed.append(f"{handle.name} ({handle.id})")
            if failed:
                raise teardown_error(failed)
        finally:
            self.report.count_calls(self._client)
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
        where = f" database {handle.database}" if handle.database else ""
        self.report.kept.append(f"{handle.name} ({handle.id}){where}")
        if self.settings.diff_kept:
            self.report.kept_diffs[handle.name] = self._kept_diff(handle)

    def _kept_diff(self, handle: BranchHandle) -> str:
        """Neon's schema diff of a kept branch against its parent; a failure to get it
        is said in its place, since the branch is kept either way."""
        database = handle.database or self.settings.database
        try:
            return self._run(self.client.compare_schema(handle.project_id, handle.id, db_name=database))
        except HarnessError as exc:
            return f"(no diff: {exc.one_line()})"

    def release_worker(self, worker: str) -> None:
        """In an xdist controller: `worker` is done. A branch of its own is deleted now,
        unless it kept it (a failed delete is tried again, and reported, by `finish`); a
        database of its own goes with the shared branch, which `finish` deletes."""
        with self._lock:
            handle = self.worker_branches.pop(worker, None)
        if handle is None or handle.database is not None:
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



def _import_migrations() -> None:
    # Alembic and SQLAlchemy, about 0.5 s of imports: a build does them while its branch
    # is being created instead of after
    import cathouse_harness.migrate.all_services  # noqa: F401
