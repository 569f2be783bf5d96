"""The xdist controller's branch broker: every worker's session setup, done once.

Each worker doing its own setup paid, per worker, the client's imports, a watchdog
process, the parent and template look-ups and their API calls; on a two-core machine
four workers paid it in contention. Here a thread of the controller does that work for
all of them: it idles (looking at one directory) until a worker, through
`cathouse_harness.xdist.handoff`, says that its collected tests use a branch (or, for a test that asks
for a fixture by name, that it needs one now). It then sets up once
(`BranchSession.setup`: backend, parent, template, one watchdog), forks one branch for
the run's workers and gives each worker a database of its own on it
(`cathouse_harness.xdist.worker_databases`): Neon runs one operation of a project at a time, so a fork
per worker would make the workers wait for each other's forks. xdist hands out the
first test only once every worker has collected, so most of this happens before any
test waits for it. At the end it deletes the shared branch unless a worker kept its
database; the controller's sweep (`cathouse_harness.cleanup.sweep`) remains the net for Ctrl-C, crashed
workers and failed deletes.

A run whose tests use no branch makes no API call and starts no server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cathouse_harness.cleanup.runs import check_run_id
from cathouse_harness.db.guard import harness_connections
from cathouse_harness.errors import HarnessError
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.progress import Progress, tell
from cathouse_harness.xdist.handoff import answer, answer_error, handoff_dir, handoff_path, scan

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.session.branch_session import BranchSession, SessionReport

log = get_logger("broker")

# How often the idle broker looks for requests: a worker's first test waits at most this.
POLL = 0.01
# How long the end of the run waits for setups, forks and deletes still in flight; what
# they leave is the watchdog's and the sweep's.
JOIN_TIMEOUT = 30.0
# how often the end of an interrupted run asks the work still running to stop
STOP_AGAIN = 0.05


class BranchBroker:
    def __init__(
        self, settings: Settings, run_id: str, *, poll: float = POLL, apart: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        # migrate in a process of their own (BranchSession's `apart`)
        self._apart = apart
        self.progress = progress
        self.run_id = run_id
        self.session: BranchSession | None = None
        self._watched = handoff_path(settings, run_id)
        self._poll = poll
        self._stop = threading.Event()
        self._served: set[str] = set()  # workers whose database was made (or refused)
        self._jobs: list[threading.Thread] = []  # forks and releases in flight
        self._setup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="cathouse-broker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        # the controller's conftests are guarded meanwhile, in its main thread
        with harness_connections():
            self._serve_requests()

    def _serve_requests(self) -> None:
        busy = False
        # after work, look again at once: more workers say so while the setup runs
        while not self._stop.wait(0 if busy else self._poll):
            expecting, requesting = scan(self._watched)
            fresh = (expecting | requesting) - self._served
            busy = bool(fresh)
            if fresh:
                self._setup()
            for worker in fresh:
                try:
                    self._serve(worker)
                except Exception as exc:  # the worker must hear of it, not wait for ever
                    log.error("could not serve %s's request: %s", worker, exc)
                    self._answer_error(worker, exc)
                self._served.add(worker)

    def _setup(self) -> None:
        """Once, as soon as a worker expects to need a branch."""
        if self.session is not None:
            return
        from cathouse_harness.session.branch_session import BranchSession

        self.session = BranchSession(
            self.settings, run_id=self.run_id, worker="controller", apart=self._apart,
            progress=self.progress,
        )
        try:
            self.session.setup()
        except BaseException as exc:  # every request gets the same answer
            self._setup_error = exc
            tell(self.progress, None)

    def _serve(self, worker: str) -> None:
        check_run_id(worker, key="worker")
        if self._setup_error is not None:
            self._answer_error(worker, self._setup_error)
            return
        self._jobs.append(_in_background(self._fork, worker))

    def _fork(self, worker: str) -> None:
        assert self.session is not None
        try:
            handle = self.session.fork_worker(worker)
        except BaseException as exc:
            self._answer_error(worker, exc)
            return
        finally:
            tell(self.progress, None)  # until the next fork or copy says otherwise
        answer(self._directory(), worker, handle, backend=self.session.report.backend)

    def release(self, worker: str) -> None:
        """`worker` is done (or dead): its own branch, if it has one, is deleted now (its
        database goes with the shared branch at the end)."""
        if self.session is not None and self._setup_error is None:
            self._jobs.append(_in_background(self.session.release_worker, worker))

    def _directory(self) -> Path:
        # checks the home before anything is written into it
        return handoff_dir(self.settings, self.run_id)

    def _answer_error(self, worker: str, exc: BaseException) -> None:
        try:
            answer_error(self._directory(), worker, exc)
        except (OSError, HarnessError) as failed:
            log.error("could not answer %s: %s", worker, failed)

    def close(self) -> SessionReport | None:
        """Stop serving and delete the shared branch unless a worker kept it; the
        session's report (None when no worker asked). A failed delete is in its
        `delete_failed`, for the summary and the sweep."""
        self._stop.set()
        self._stop_work()
        self._thread.join(JOIN_TIMEOUT)
        for job in self._jobs:
            job.join(JOIN_TIMEOUT)
        if self.session is None:
            return None
        try:
            self.session.finish()
        except HarnessError as exc:
            log.error("%s", exc)
        return self.session.report

    def _busy(self) -> threading.Thread | None:
        return next((t for t in (self._thread, *self._jobs) if t.is_alive()), None)

    def _stop_work(self) -> None:
        """Still setting up or copying (a Ctrl-C, or every worker gone): no worker will
        use it now. Asked again until the work has ended: a Ctrl-C between two steps of
        the setup (the server's start, the template's create, Alembic's imports) finds
        nothing to cancel yet, and the migration the setup starts next must be stopped
        too. Asked once, the run waited out JOIN_TIMEOUT for a long statement (37.5 s)."""
        deadline = time.monotonic() + JOIN_TIMEOUT
        while (busy := self._busy()) is not None and time.monotonic() < deadline:
            if self.session is not None:
                self.session.interrupt()
            busy.join(STOP_AGAIN)


def _in_background(job: Callable[[str], None], worker: str) -> threading.Thread:
    # a thread each: the first forks the shared branch, the others wait for it and then
    # copy their databases, and neither the broker's thread nor xdist's waits for them
    def harness_job(worker: str) -> None:
        with harness_connections():
            job(worker)

    thread = threading.Thread(target=harness_job, args=(worker,), name=f"cathouse-{worker}", daemon=True)
    thread.start()
    return thread
