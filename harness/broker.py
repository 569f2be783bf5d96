"""The xdist controller's branch broker: every worker's session setup, done once.

Each worker doing its own setup paid, per worker, the client's imports, a watchdog
process, the parent and template look-ups and their API calls; on a two-core machine
four workers paid it in contention. Here a thread of the controller does that work for
all of them: it idles (looking at one directory) until a worker, through
`harness.handoff`, says that its collected tests use a branch (or, for a test that asks
for a fixture by name, that it needs one now). It then sets up once
(`BranchSession.setup`: backend, parent, template, one watchdog) and forks that
worker's branch, the creates of several workers running concurrently on one client.
xdist hands out the first test only once every worker has collected, so most of this
happens before any test waits for it; a worker that then gets no test using a branch
has its branch deleted when it is done, like any other. At the end it deletes every branch it
forked that its worker did not keep, most of them as soon as their worker is done
(`release`), while xdist still shuts the others down; the controller's sweep
(`harness.sweep`) remains the net for Ctrl-C, crashed workers and failed deletes.

A run whose tests use no branch makes no API call and starts no server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.handoff import answer, answer_error, handoff_dir, handoff_path, scan
from harness.log import get_logger
from harness.runs import check_run_id

if TYPE_CHECKING:
    from harness.session import BranchSession, SessionReport
    from harness.settings import Settings

log = get_logger("broker")

# How often the idle broker looks for requests: a worker's first test waits at most this.
POLL = 0.01
# How long the end of the run waits for setups, forks and deletes still in flight; what
# they leave is the watchdog's and the sweep's.
JOIN_TIMEOUT = 30.0


class BranchBroker:
    def __init__(self, settings: Settings, run_id: str, *, poll: float = POLL) -> None:
        self.settings = settings
        self.run_id = run_id
        self.session: BranchSession | None = None
        self._watched = handoff_path(settings, run_id)
        self._poll = poll
        self._stop = threading.Event()
        self._served: set[str] = set()  # workers whose branch was forked (or refused)
        self._workers: set[str] = set()  # every worker xdist started
        self._down: set[str] = set()  # those it reported down
        self._changed = threading.Condition()  # over the three sets above
        self._forks: list[threading.Thread] = []
        self._deletes: list[threading.Thread] = []
        self._setup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="cathouse-broker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add_worker(self, worker: str) -> None:
        with self._changed:
            self._workers.add(worker)

    def _main(self) -> None:
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
                with self._changed:  # its fork's thread is in self._forks by now
                    self._served.add(worker)
                    self._changed.notify_all()

    def _setup(self) -> None:
        """Once, as soon as a worker expects to need a branch."""
        if self.session is not None:
            return
        from harness.session import BranchSession

        self.session = BranchSession(self.settings, run_id=self.run_id, worker="controller")
        try:
            self.session.setup()
        except BaseException as exc:  # every request gets the same answer
            self._setup_error = exc

    def _serve(self, worker: str) -> None:
        check_run_id(worker, key="worker")
        if self._setup_error is not None:
            self._answer_error(worker, self._setup_error)
            return
        self._forks.append(_in_background(self._fork, worker))

    def _fork(self, worker: str) -> None:
        assert self.session is not None
        try:
            handle = self.session.fork_worker(worker)
        except BaseException as exc:
            self._answer_error(worker, exc)
            return
        answer(self._directory(), worker, handle, backend=self.session.report.backend)

    def release(self, worker: str) -> None:
        """`worker` is done (or dead): delete its branch, unless it kept it, once every
        other worker has had its fork."""
        with self._changed:
            self._down.add(worker)
            self._changed.notify_all()
        if self.session is not None and self._setup_error is None:
            self._deletes.append(_in_background(self._release, worker))

    def _release(self, worker: str) -> None:
        assert self.session is not None
        # Neon runs one operation of a project at a time: a delete sent now would hold up
        # forks other workers still wait for, so it waits for them (a worker that asks
        # for no branch holds it up until that worker is done too; the end of the run
        # deletes what is left anyway)
        with self._changed:
            self._changed.wait_for(
                lambda: self._stop.is_set() or self._workers <= self._served | self._down
            )
        for fork in list(self._forks):
            fork.join(JOIN_TIMEOUT)
        try:
            self.session.release_worker(worker)
        except Exception as exc:  # close() deletes what is left, and reports it
            log.warning("could not delete %s's branch yet: %s", worker, exc)

    def _directory(self) -> Path:
        # checks the home before anything is written into it
        return handoff_dir(self.settings, self.run_id)

    def _answer_error(self, worker: str, exc: BaseException) -> None:
        try:
            answer_error(self._directory(), worker, exc)
        except (OSError, HarnessError) as failed:
            log.error("could not answer %s: %s", worker, failed)

    def close(self) -> SessionReport | None:
        """Stop serving and delete every forked branch its worker did not keep; the
        session's report (None when no worker asked). A failed delete is in its
        `delete_failed`, for the summary and the sweep."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(JOIN_TIMEOUT)
        for job in [*self._forks, *self._deletes]:
            job.join(JOIN_TIMEOUT)
        if self.session is None:
            return None
        try:
            self.session.finish()
        except HarnessError as exc:
            log.error("%s", exc)
        return self.session.report


def _in_background(job: Callable[[str], None], worker: str) -> threading.Thread:
    # a thread each, so that the creates (and deletes) of several workers overlap on the
    # session's one loop, and neither the broker's thread nor xdist's waits for them
    thread = threading.Thread(target=job, args=(worker,), name=f"cathouse-{worker}", daemon=True)
    thread.start()
    return thread
