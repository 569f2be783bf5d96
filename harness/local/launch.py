"""Finding or starting the shared local server from a client process, and stopping it.

`ensure_local_server` reuses the server that answers for a home and storage, or starts a
detached daemon (`python -m cathouse_harness.local.server`, see server.py) under an exclusive
`flock`, so that two processes starting at once get one server. This half is kept apart
from the serving code so that a test process that only needs a server never imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from cathouse_harness.errors import ConfigError, LocalServerError
from cathouse_harness.local.data.names import host_mode
from cathouse_harness.local.discovery import (
    STORAGES,
    LocalServerInfo,
    discovery_path,
    live_server,
    lock_path,
    log_path,
    pid_alive,
    read_discovery,
    resolve_home,
)
from cathouse_harness.local.sim.latency import ENV_VAR as LATENCY_ENV
from cathouse_harness.local.sim.latency import parse_latency
from cathouse_harness.support import env
from cathouse_harness.support.interrupt import stoppable
from cathouse_harness.support.locking import file_lock
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.safe_paths import write_private

START_TIMEOUT = 60.0
_POLL = Backoff(0.02)


def check_storage(storage: str) -> None:
    if storage not in STORAGES:
        raise LocalServerError(f"storage must be memory or disk, got {storage!r}")


# The data plane a home's branches live on (#24): `instance` (a PostgreSQL per branch)
# now; `shared` (one PostgreSQL for every branch) was retired, and a server of today
# would not see that home's branches and leave their data behind.
PLANE = "instance"
RETIRED_PLANE = "shared"


def plane_record(home: Path, storage: str) -> Path:
    return home / f"data-plane-{storage}"


def check_data_plane(home: Path, storage: str) -> None:
    """Refuse, in one line (exit code 2), what the retired shared data plane left:
    `CATHOUSE_PG_URL` set, or a home on disk whose branches live on that plane. An
    in-memory home keeps nothing past its server's stop, so there is nothing to lose."""
    if env.read("CATHOUSE_PG_URL"):
        raise ConfigError(
            "is retired: the local server runs a PostgreSQL per branch, which one external "
            "server cannot give",
            key="CATHOUSE_PG_URL", source="the environment",
            hint="unset it; to run the branches on an installed PostgreSQL set "
            "CATHOUSE_POSTGRES_BIN (or postgres_bin) to its bin directory or to system",
        )
    if storage != "disk":
        return
    try:
        recorded = plane_record(home, storage).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        # a home made before the record kept its shared cluster in <home>/pg
        recorded = RETIRED_PLANE if (home / "pg" / "data").is_dir() else PLANE
    if recorded != PLANE:
        raise ConfigError(
            f"the branches of {home} (disk storage) live on the retired {recorded} data "
            "plane (one PostgreSQL for every branch), which this version cannot serve",
            hint="remove them with `cathouse-branch gc --all`, or set "
            "CATHOUSE_HARNESS_HOME to another directory",
        )


def keep_data_plane(home: Path, storage: str) -> None:
    """`check_data_plane`, then record the plane so that a later version can tell."""
    check_data_plane(home, storage)
    record = plane_record(home, storage)
    if not record.exists():
        write_private(record, PLANE + "\n")



def _daemon_command(
    home: Path, storage: str, idle_timeout: float, names: tuple[str | None, str | None] = (None, None)
) -> list[str]:
    database, role = names
    named = [*(["--database", database] if database else []), *(["--role", role] if role else [])]
    return [
        sys.executable,
        "-m",
        "cathouse_harness.local.server",
        "--home",
        str(home),
        "--storage",
        storage,
        "--idle-timeout",
        repr(float(idle_timeout)),
        "--daemon",
        *named,
    ]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# the daemons this process started (see ensure_local_server)
_DAEMONS: list[subprocess.Popen[bytes]] = []


@atexit.register
def _let_daemons_run_on() -> None:
    """The daemons run on after this process by design (their idle timeout stops them).
    Collected at its exit, Popen would still warn that each "is still running" (a
    ResourceWarning in the output of a `-X dev` or `python -W error` run); they are no
    children of ours to wait for any more."""
    for process in _DAEMONS:
        if process.poll() is None:
            process.returncode = 0  # what Popen's collection reads: nothing to wait for
    _DAEMONS.clear()


def ensure_local_server(
    home: Path | None = None,
    *,
    storage: str = "memory",
    idle_timeout: float = 900,
    postgres_bin: str | None = None,
    database: str | None = None,
    role: str | None = None,
    pooler_mode: str | None = None,
) -> LocalServerInfo:
    """A running local server for `home`: the one already answering, or a new daemon.
    The daemon reads `CATHOUSE_LOCAL_LATENCY` and `CATHOUSE_LOCAL_HOSTS` /
    `CATHOUSE_LOCAL_ROUTER` itself; they are checked here too, so a bad value is the
    caller's one-line error rather than a daemon that exits while starting. (A server
    already running keeps the settings it started with.) `postgres_bin` (a checked
    choice, `cathouse_harness.local.pg_choice`) reaches a new daemon as
    CATHOUSE_POSTGRES_BIN, and `pooler_mode` as CATHOUSE_POOLER_MODE; None leaves that
    variable as it is. `database` and `role`
    are what a new daemon makes a new project with (None: `neondb` / `neondb_owner`);
    a running server, or a home's existing project, keeps its own."""
    check_storage(storage)
    parse_latency(env.read(LATENCY_ENV))
    host_mode(resolve=lambda: False)
    home = resolve_home(home)
    info = live_server(home, storage)
    if info is not None:
        return info
    with file_lock(lock_path(home, storage)):
        info = live_server(home, storage)
        if info is not None:
            return info
        discovery_path(home, storage).unlink(missing_ok=True)
        check_data_plane(home, storage)
        _check_binaries(home, storage, postgres_bin)
        logfile = log_path(home, storage)
        process = _spawn_daemon(
            home, storage, idle_timeout, logfile, (database, role),
            {"CATHOUSE_POSTGRES_BIN": postgres_bin, "CATHOUSE_POOLER_MODE": pooler_mode},
        )
        # The daemon outlives this call (and usually this process). A Popen dropped while
        # its child runs warns (ResourceWarning) when collected, in whatever test runs
        # then; held here, it never is while we run.
        _DAEMONS.append(process)
        found: list[LocalServerInfo] = []
        given_up = threading.Event()

        def answering() -> bool:
            if given_up.is_set():
                raise KeyboardInterrupt  # what stopped the session's other steps too
            if process.poll() is not None:
                raise LocalServerError(
                    f"the local Neon server exited with code {process.returncode} while "
                    f"starting; see {logfile}",
                    hint=_tail(logfile) or None,
                )
            data = read_discovery(home, storage)
            if data and data.get("pid") == process.pid:
                found.extend(filter(None, [live_server(home, storage)]))
            return bool(found)

        # Ctrl-C reaches the main thread only; a session starting the server in a thread
        # of its own (the xdist controller's broker) is told through `stop_all`
        with stoppable(given_up.set):
            try:
                if wait_until(answering, timeout=START_TIMEOUT, backoff=_POLL):
                    return found[0]
            except BaseException:
                _abandon(process)
                raise
        _abandon(process)
        raise LocalServerError(
            f"the local Neon server did not answer within {START_TIMEOUT:.0f} s; see {logfile}"
        )


# how long an abandoned start may take to undo itself (finish its current step, stop the
# PostgreSQL it started, remove its in-memory files) before its starter stops waiting
ABANDON_WAIT = 10.0


def _abandon(process: subprocess.Popen[bytes]) -> None:
    """Nobody waits for this daemon's start any more (Ctrl-C, a timeout, a failure): stop
    it rather than leave a server, its PostgreSQL and its in-memory cluster running for
    `idle_timeout`. Its SIGTERM handler ends the start after the step it is in and
    removes what the start made (server.py); waiting for that is what makes the run's
    end mean nothing is left. A daemon that outlasts ABANDON_WAIT finishes on its own."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(ABANDON_WAIT)
    except subprocess.TimeoutExpired:
        return
    with contextlib.suppress(ValueError):
        _DAEMONS.remove(process)  # reaped: nothing left to warn about


def _check_binaries(home: Path, storage: str, postgres_bin: str | None) -> None:
    """A named PostgreSQL that cannot open the home's instances is the caller's one
    line, not a daemon's exit (`cathouse_harness.local.pg_choice`)."""
    from cathouse_harness.local.compute.layout import templates_dir
    from cathouse_harness.local.pg_choice import ENV_VAR, preflight

    preflight(postgres_bin or env.read(ENV_VAR), templates_dir(home, storage).parent)  # type: ignore[arg-type]


def _spawn_daemon(
    home: Path,
    storage: str,
    idle_timeout: float,
    logfile: Path,
    names: tuple[str | None, str | None] = (None, None),
    chosen: Mapping[str, str | None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m cathouse_harness.local.server --daemon` detached, logging to
    `logfile`; `chosen` are the settings it reads from its environment (None: as is)."""
    child_env = dict(os.environ)
    child_env.update({name: value for name, value in (chosen or {}).items() if value is not None})
    package_root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, child_env.get("PYTHONPATH")) if p
    )
    with open(logfile, "ab") as out:
        os.chmod(logfile, 0o600)
        return subprocess.Popen(
            _daemon_command(home, storage, idle_timeout, names),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=child_env,
            cwd=str(home),
        )


# what `stop_local_server(restart=True)` sends: the server stops but keeps its in-memory
# cluster, which any other stop removes (no cluster is left in /dev/shm)
RESTART_SIGNAL = signal.SIGUSR1


def stop_local_server(home: Path | None = None, *, storage: str | None = None, timeout: float = 30.0,
                      restart: bool = False) -> bool:
    """Stop this home's local server(s); True when one was running. `restart`: its
    in-memory cluster stays, with its branches, for the server started next."""
    home = resolve_home(home)
    stopped = False
    for kind in (storage,) if storage else STORAGES:
        data = read_discovery(home, kind)
        if not data:
            continue
        try:
            pid = int(data["pid"])
        except (KeyError, TypeError, ValueError):
            discovery_path(home, kind).unlink(missing_ok=True)
            continue
        if live_server(home, kind) is None:
            discovery_path(home, kind).unlink(missing_ok=True)
            continue
        os.kill(pid, RESTART_SIGNAL if restart else signal.SIGTERM)
        if not wait_until(partial(_gone, pid), timeout=timeout, backoff=_POLL):
            raise LocalServerError(f"the local Neon server (pid {pid}) did not stop in {timeout:.0f} s")
        discovery_path(home, kind).unlink(missing_ok=True)
        stopped = True
    return stopped


def _gone(pid: int) -> bool:
    return not pid_alive(pid)
