"""One instance's life: start its postmaster, find it, stop it, open an admin session.

The postmaster runs as the home's OS user, in a session of its own (a Ctrl-C meant for
the server must not stop it), and listens on nothing but a unix socket in its 0700
instance directory: `listen_addresses` is empty and the socket's directory is given on
the command line, which outranks every configuration file (a superuser's ALTER SYSTEM
included). We wait for the "ready" line of postmaster.pid ourselves at a few
milliseconds' pace, where `pg_ctl -w` looks only every 100 ms.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.layout import SOCKET_PORT, InstancePaths, owned_dir
from cathouse_harness.local.pg_binaries import OsUser, minimal_env
from cathouse_harness.local.pg_choice import PgInstall
from cathouse_harness.local.pg_layout import SUPERUSER
from cathouse_harness.support.interrupt import stoppable
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.redact import Secret
from cathouse_harness.support.safe_paths import remove_tree

START_TIMEOUT = 60.0
_POLL = Backoff(0.002, most=0.01, growth=1.5)
# a log is never a link the instance's user put there
_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Instance:
    """A branch's PostgreSQL: its files, who runs it, on what, and the superuser's
    password (the same along a lineage: a fork copies the roles with the data)."""

    name: str
    paths: InstancePaths
    user: OsUser
    install: PgInstall
    superuser_password: Secret

    def bin(self, name: str) -> str:
        return str(self.install.bin_dir / name)

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who the files we write for it belong to (None: to us, who run it)."""
        return (self.user.uid, self.user.gid) if self.user.switch else None


def run_as(
    user: OsUser, args: Sequence[str], *, cwd: Path, timeout: float = 120, interruptible: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a command as the instances' user, with an environment of its own.
    `interruptible`: `support.interrupt.stop_all` kills it (and what it started), for a
    command that leaves nothing running and nothing the caller keeps half-made (initdb:
    a server's stopped start does not wait out its second or more)."""
    try:
        if not interruptible:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                list(args), capture_output=True, text=True, check=False, timeout=timeout,
                cwd=str(cwd), env=minimal_env(cwd), start_new_session=True, **user.popen_kwargs(),
            )
        with subprocess.Popen(  # type: ignore[call-overload]
            list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(cwd),
            env=minimal_env(cwd), start_new_session=True, **user.popen_kwargs(),
        ) as process, stoppable(functools.partial(_kill_group, process)):
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.communicate()
                raise
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    except PermissionError as exc:
        raise LocalServerError(
            f"{user.name} cannot run {args[0]} ({exc.strerror})",
            hint="every directory above it must be searchable by that user",
        ) from None


def _kill_group(process: subprocess.Popen[str]) -> None:
    """The command and its children (its own session), unless it has ended already."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def failure(what: str, result: subprocess.CompletedProcess[str] | None, log_file: Path) -> LocalServerError:
    """One line for a failed step: its last line of output, and where the log is."""
    detail = ""
    if result is not None:
        lines = [line for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        detail = f": {lines[-1].strip()}" if lines else f" (exit code {result.returncode})"
    return LocalServerError(f"PostgreSQL {what} failed{detail}", hint=f"see {log_file}")


def running_pid(instance: Instance) -> int | None:
    """The postmaster's pid when one runs on this instance's data directory."""
    return postmaster_pid(instance.paths.data)


def postmaster_pid(data: Path) -> int | None:
    """The pid of a postmaster running on the data directory `data`, if one does."""
    try:
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    try:  # a pid file left by a crash may name a pid another program has since
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"postgres" in command else None


def _reap(process: subprocess.Popen[bytes]) -> None:
    # the postmaster is our child until it exits: wait for it so it never lingers as a zombie
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()


def start(instance: Instance, settings: Mapping[str, str] | None = None) -> int:
    """Start the instance (or find it running); its postmaster's pid once it is ready.
    `settings` hold for this run only (a replay's recovery target: the next start after
    it, a resume, must not see them)."""
    pid = running_pid(instance)
    if pid is not None:
        return pid
    paths = instance.paths
    once = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
    owned_dir(paths.socket_dir, instance.user)
    log_fd = os.open(paths.log_file, _LOG_FLAGS, 0o600)
    try:
        process = subprocess.Popen(  # type: ignore[call-overload]
            [instance.bin("postgres"), "-D", str(paths.data),
             "-c", "listen_addresses=", "-c", f"unix_socket_directories={paths.socket_dir}",
             "-c", f"port={SOCKET_PORT}", *once],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            cwd=str(paths.root), env=minimal_env(paths.root), start_new_session=True,
            **instance.user.popen_kwargs(),
        )
    finally:
        os.close(log_fd)
    _reap(process)
    pid_file = paths.data / "postmaster.pid"

    def ready() -> bool:
        if process.poll() is not None:
            raise LocalServerError(f"PostgreSQL instance {instance.name} did not start "
                                   f"(exit code {process.returncode})", hint=f"see {paths.log_file}")
        with contextlib.suppress(OSError, IndexError, ValueError):
            lines = pid_file.read_text().splitlines()
            return int(lines[0]) == process.pid and lines[7].strip() == "ready"
        return False

    if not wait_until(ready, timeout=START_TIMEOUT, backoff=_POLL):
        raise LocalServerError(f"PostgreSQL instance {instance.name} was not ready in time",
                               hint=f"see {paths.log_file}")
    return int(process.pid)


def stop(instance: Instance) -> None:
    """Fast shutdown (what `pg_ctl -m fast` does): sessions end, a checkpoint, exit. The
    data directory is then consistent on its own and can be copied as it is."""
    if fast_stop(instance.paths.data) is not None:
        raise LocalServerError(f"PostgreSQL instance {instance.name} still runs after a fast shutdown",
                               hint=f"see {instance.paths.log_file}")


def fast_stop(data: Path) -> int | None:
    """Fast shutdown of the postmaster on `data`, if one runs (also for the cleaners,
    who have no `Instance`); its pid when it still runs after START_TIMEOUT."""
    pid = postmaster_pid(data)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    return None if wait_until(lambda: not pid_alive(pid), timeout=START_TIMEOUT, backoff=_POLL) else pid


@contextlib.contextmanager
def admin_session(instance: Instance, database: str = "postgres") -> Iterator[psycopg.Connection]:
    """A superuser session over the instance's socket (SCRAM with the lineage's password,
    which no client is ever given), in autocommit."""
    try:
        connection = psycopg.connect(
            host=str(instance.paths.socket_dir), port=SOCKET_PORT, user=SUPERUSER,
            password=instance.superuser_password.reveal(), dbname=database,
            autocommit=True, connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise LocalServerError(f"cannot open an admin session on instance {instance.name}: "
                               f"{str(exc).strip().splitlines()[-1]}") from None
    with connection:
        yield connection


def remove(instance: Instance) -> None:
    """Stop the instance and delete its files (a branch deleted, a failed fork)."""
    stop(instance)
    owners = {instance.user.uid, os.geteuid()}
    remove_tree(instance.paths.root, owners=owners)
    if instance.paths.socket_dir.parent != instance.paths.root:  # a short one of its own
        remove_tree(instance.paths.socket_dir, owners=owners)
