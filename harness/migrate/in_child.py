"""Every service's migrations in a Python process of their own, for a caller whose own
process has not imported the project's code yet.

Alembic runs a service's env.py in the caller's process (`cathouse_harness.migrate.all_services`),
and afterwards the modules it imported from the project are forgotten
(`cathouse_harness.migrate.environment`). What they registered in installed packages is
not: SQLModel's and SQLAlchemy's declarative metadata keep the tables of `app.models`,
and when pytest then imports the project's conftest, `app.models` runs again and its
tables are "already defined". Keeping the modules instead would be worse: anything they
built at import (an engine, a settings object) would name the template the migrations
ran on. So a session made before the conftests load (`pytest_load_initial_conftests`)
migrates here: a child that starts with the caller's sys.path and environment, runs the
same `migrate_all`, and hands back its results or its one-line error. The settings and
the URL travel over a pipe, never on a command line.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import HarnessError, MigrationError, RelayedError
from cathouse_harness.migrate.runner import ServiceResult
from cathouse_harness.support.interrupt import stoppable
from cathouse_harness.support.progress import Progress, tell


@dataclass(frozen=True)
class _Request:
    settings: Settings
    direct_url: str
    sys_path: list[str]
    seed: bool = False


@dataclass(frozen=True)
class _Outcome:
    results: list[ServiceResult] | None = None
    error_line: str | None = None
    exit_code: int = 1


def migrate_in_child(
    settings: Settings, direct_url: str, progress: Progress | None = None, *, seed: bool = False
) -> list[ServiceResult]:
    """`migrate_all(settings, direct_url, seed=seed)` in a new Python process (see the
    module's text: the seed's callables import project code too); `progress` hears the
    child's steps (service and revision) as the caller's own would."""
    request = pickle.dumps(_Request(settings, direct_url, list(sys.path), seed))
    read_end, write_end = os.pipe()
    said_read, said_write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(write_end), str(said_write)],
            stdin=subprocess.PIPE,
            pass_fds=(write_end, said_write),
            cwd=str(settings.project_root),
        )
    except OSError as exc:
        for fd in (read_end, write_end, said_read, said_write):
            os.close(fd)
        raise MigrationError(f"could not start a Python process to migrate in: {exc}") from None
    os.close(write_end)
    os.close(said_write)
    relay = threading.Thread(target=_relay, args=(said_read, progress), name="cathouse-child-progress",
                             daemon=True)
    relay.start()
    # stopped as Ctrl-C stops it (its running statement cancelled) when the caller gives up
    with os.fdopen(read_end, "rb") as answers, stoppable(lambda: child.send_signal(signal.SIGINT)):
        assert child.stdin is not None
        try:
            child.stdin.write(request)
            child.stdin.close()
        except BrokenPipeError:
            pass  # the child died at start; its exit code says so below
        answer = answers.read()
        code = child.wait()
    relay.join(1.0)  # its pipe closed with the child: what it said is told by now
    if not answer:
        raise MigrationError(f"the Python process that ran the migrations exited with code {code}")
    outcome: _Outcome = pickle.loads(answer)
    if outcome.results is not None:
        return outcome.results
    raise RelayedError(outcome.error_line or "the migrations failed", exit_code=outcome.exit_code)


def _relay(said: int, progress: Progress | None) -> None:
    """The child's steps, a line each, told to the caller's `progress` as they come."""
    with os.fdopen(said, "r", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            tell(progress, line.rstrip("\n") or None)


def _saying(said: int) -> Progress:
    def say(text: str | None) -> None:
        # one line per step; a caller gone meanwhile (EPIPE) is tell()'s to swallow
        os.write(said, ((text or "").replace("\n", " ") + "\n").encode("utf-8", "replace"))

    return say


def _serve(answer_fd: int, said: int) -> int:
    request: _Request = pickle.loads(sys.stdin.buffer.read())
    sys.path[:] = request.sys_path
    from cathouse_harness.migrate.all_services import migrate_all

    try:
        outcome = _Outcome(results=migrate_all(request.settings, request.direct_url,
                                               progress=_saying(said), seed=request.seed))
    except HarnessError as exc:
        outcome = _Outcome(error_line=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # an env.py's own failure that the runner did not explain
        outcome = _Outcome(error_line=f"{type(exc).__name__}: {exc}")
    with os.fdopen(answer_fd, "wb") as answers:
        answers.write(pickle.dumps(outcome))
    return 0 if outcome.results is not None else 1


def _interrupt_once(signum: int, frame: object) -> None:
    # Ctrl-C reaches this process twice (the terminal's, to the whole group, and the
    # caller's when it gives up): the first interrupts, a second would break the
    # cancelling of the statement that the first started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    # by the module's own name, so that what is pickled names it and not __main__
    from cathouse_harness.migrate.in_child import _serve as serve

    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        code = serve(int(sys.argv[1]), int(sys.argv[2]))
    except KeyboardInterrupt:
        code = 130  # the caller says it was interrupted
    # The caller waits for this process to end (after a Ctrl-C, its run's exit does): an
    # interpreter that has imported Alembic, SQLAlchemy and the project's env.py spends
    # 0.3-0.9 s tearing its objects down. The answer is written and its pipe closed,
    # nothing registered at exit here is anyone's but ours: end at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
