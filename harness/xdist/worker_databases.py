"""A database of its own for each xdist worker, on one branch the run's workers share.

Neon runs one operation of a project at a time (a second gets 423 until the first is
done), so a branch per worker puts the workers' forks one after another: at Neon's
latencies four workers waited four forks before their first tests. A worker needs a
branch of its own only for what it commits, and a database isolates that just as well:
the controller forks one branch and copies its migrated database once per worker with
`CREATE DATABASE <db>_<worker> TEMPLATE <db>` (pytest-django's `test_<db>_gw0`, made the
same way), tens of milliseconds each and no API operation. A worker's reset is that copy
made again. The branch's own database stays untouched by tests: it is every worker's
template.

PostgreSQL copies a database only while nobody else is connected to it, so every copy
of a run is made under one file lock of the run's, from a connection to the template
itself (the copying session does not count against it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cathouse_harness.cleanup.runs import run_dir
from cathouse_harness.db.quoting import quote_ident
from cathouse_harness.db.urls import libpq_url, with_database
from cathouse_harness.errors import WorkerDatabaseError
from cathouse_harness.support.interrupt import stoppable
from cathouse_harness.support.locking import file_lock
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.redact import Secret, register_url

if TYPE_CHECKING:
    from cathouse_harness.branching.lifecycle import BranchHandle
    from cathouse_harness.config.settings import Settings

# PostgreSQL keeps the first 63 bytes of a name; a worker id is short ("gw12")
_MAX_NAME = 63
# Someone else on the template (a stray pooled connection ending) holds a copy up:
# PostgreSQL says so at once, and a moment later it is usually gone.
_IN_USE_WAIT = 1.0
_IN_USE_PAUSE = Backoff(0.05)
_OBJECT_IN_USE = "55006"


class SharedBranch:
    """The one branch of a run's workers, forked by whichever asks first (`fork`); the
    others wait for it, and every one of them hears of a failed fork."""

    def __init__(self, fork: Callable[[], BranchHandle]) -> None:
        self._fork = fork
        self.handle: BranchHandle | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def get(self) -> BranchHandle:
        with self._lock:
            if self.handle is None and self._error is None:
                # the copies' driver (~80 ms of imports) loads while the fork runs
                threading.Thread(target=_import_driver, daemon=True).start()
                try:
                    self.handle = self._fork()
                except BaseException as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self.handle is not None
            return self.handle


def _import_driver() -> None:
    import psycopg  # noqa: F401


def copy_lock(settings: Settings, run_id: str) -> Path:
    """The run's lock around every copy of its workers' databases, the controller's and
    the workers' resets alike."""
    return run_dir(settings, run_id) / "worker-databases.lock"


def worker_database_name(database: str, worker: str) -> str:
    suffix = f"_{worker}"
    return database.encode()[: _MAX_NAME - len(suffix.encode())].decode(errors="ignore") + suffix


def worker_handle(shared: BranchHandle, database: str) -> BranchHandle:
    """`shared`'s handle for a worker: the same branch and endpoint, URLs naming `database`."""
    direct = with_database(shared.direct_url.reveal(), database)
    pooled = with_database(shared.pooled_url.reveal(), database)
    register_url(direct)
    register_url(pooled)
    return dataclasses.replace(
        shared, direct_url=Secret(direct), pooled_url=Secret(pooled), database=database
    )


def copy_template(
    direct_url: Secret, template: str, target: str, lock: Path, *, replace: bool = False
) -> None:
    """Make `target` a fresh copy of `template` on the branch `direct_url` reaches (its
    database dropped first when `replace`, ending the sessions still on it)."""
    import psycopg

    url = libpq_url(with_database(direct_url.reveal(), template))
    statements = [f"CREATE DATABASE {quote_ident(target)} TEMPLATE {quote_ident(template)}"]
    if replace:
        statements.insert(0, f"DROP DATABASE IF EXISTS {quote_ident(target)} WITH (FORCE)")
    with file_lock(lock):
        try:
            with psycopg.connect(url, autocommit=True, application_name="cathouse-harness") as conn, \
                    stoppable(lambda: conn.cancel_safe(timeout=1.0)):  # a big copy ends on Ctrl-C
                for statement in statements:
                    _execute_when_free(conn, statement)
        except psycopg.Error as exc:
            # the migrations' one-line account of a driver error (SQLAlchemy comes with
            # that module: imported on this failing path only)
            from cathouse_harness.migrate.connection import describe_exception

            raise WorkerDatabaseError(
                f"could not copy database {template} to {target}: {describe_exception(exc)}",
                hint="PostgreSQL copies a database only while nobody else is on it: connect to "
                "the worker's database (DATABASE_URL, the fixtures), not to the branch's own, or "
                "set worker_isolation = \"branch\" for a branch per worker",
            ) from None


def _execute_when_free(conn, statement: str) -> None:  # type: ignore[no-untyped-def]
    """`statement`, again while PostgreSQL answers that the database is in use (55006),
    for at most `_IN_USE_WAIT`; then that refusal is raised."""
    import psycopg

    refused: list[psycopg.Error] = []

    def done() -> bool:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            if exc.sqlstate != _OBJECT_IN_USE:
                raise
            refused.append(exc)
            return False
        return True

    if not wait_until(done, timeout=_IN_USE_WAIT, backoff=_IN_USE_PAUSE):
        raise refused[-1]
