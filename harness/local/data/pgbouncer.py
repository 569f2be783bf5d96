"""One PgBouncer in transaction mode behind every endpoint's pooled listener.

Transaction mode is Neon's; so are protocol-level prepared statements, which PgBouncer
carries only from 1.21 (`max_prepared_statements`). An older PgBouncer (Debian 12 has
1.18) cannot, and a driver that prepares statements by name (psycopg 3 after a few runs
of one query, asyncpg always) then fails with "prepared statement … already exists"
where Neon would not: `CATHOUSE_POOLER_MODE=session` (the `pooler_mode` setting) trades
that for session pooling, whose session state outlives a transaction as Neon's does not.

One runs per instance, as the instance's unprivileged user, on a unix socket in the
instance's 0700 socket directory (only the relay reaches it; it has no TCP port), with a
generated ini whose `[databases]` section has one fallback entry (`*`: any branch database
by its own name, so creating a branch needs no reload) and an
auth file of SCRAM secrets (the same verifiers PostgreSQL stores, so PgBouncer can log
in to PostgreSQL with the client's own proof and no password is kept anywhere).
Changes are applied with `RELOAD` on its admin console.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg
from cathouse_harness.errors import ConfigError, LocalServerError
from cathouse_harness.local.data.scram import scram_verifier
from cathouse_harness.local.pg_binaries import OsUser, chown_to, minimal_env
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until, wait_until_async
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.safe_paths import ensure_dir, write_private

log = get_logger("local.pgbouncer")


ADMIN_USER = "cathouse_pgbouncer_admin"
POOLER_MODE_ENV = "CATHOUSE_POOLER_MODE"
POOLER_MODES = ("transaction", "session")
# the first PgBouncer that keeps track of protocol-level prepared statements
PREPARED_STATEMENTS_SINCE = (1, 21)
# as many as a pooled client may keep prepared at once (Neon's pooler allows this many)
_MAX_PREPARED = 1000
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin")
_START_TIMEOUT = 15.0
# how often a start tries the admin console, and a stop looks for the process's exit
_POLL = Backoff(0.02)
_ADMIN_ITERATIONS = 16
# the port number in a unix socket's name (PostgreSQL's is 5432 in the same directory)
SOCKET_PORT = 6432


def find_pgbouncer() -> Path | None:
    """The `pgbouncer` binary CATHOUSE_PGBOUNCER names, else on PATH or in the usual sbin
    directories. CATHOUSE_PGBOUNCER=off runs the pooled endpoints without it, as on a
    machine that lacks it (how the tests that need it are seen to skip)."""
    chosen = env.read("CATHOUSE_PGBOUNCER")
    if chosen is not None:
        if chosen.strip().lower() == "off":
            return None
        path = Path(chosen).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"{chosen!r} is not an executable file", key="CATHOUSE_PGBOUNCER",
                source="environment", hint="give the pgbouncer binary's path, or off",
            )
        return path
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / "pgbouncer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def pooler_mode() -> str:
    """The pool mode the daemon gives PgBouncer: CATHOUSE_POOLER_MODE, else Neon's."""
    chosen = (env.read(POOLER_MODE_ENV) or "transaction").strip().lower()
    if chosen not in POOLER_MODES:
        raise ConfigError(
            f"{chosen!r} is not a pool mode", key=POOLER_MODE_ENV, source="environment",
            hint="use transaction (Neon's) or session",
        )
    return chosen


def pgbouncer_version(binary: Path) -> tuple[int, ...] | None:
    """What `pgbouncer --version` says of itself ("PgBouncer 1.18.0"), None if unreadable."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10,
            stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"PgBouncer\s+(\d+)\.(\d+)(?:\.(\d+))?", done.stdout + done.stderr)
    if found is None:
        return None
    return tuple(int(part) for part in found.groups(default="0"))


def tracks_prepared_statements(version: tuple[int, ...] | None) -> bool:
    """Whether this PgBouncer can keep track of protocol-level prepared statements."""
    return version is not None and version[:2] >= PREPARED_STATEMENTS_SINCE


def carries_prepared_statements(version: tuple[int, ...] | None, mode: str) -> bool:
    """Whether named prepared statements survive this pooler as on Neon's."""
    return mode == "session" or tracks_prepared_statements(version)


def _auth_line(user: str, secret: str) -> str:
    def quote(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    return f"{quote(user)} {quote(secret)}\n"


def stop_stale(directory: Path) -> int | None:
    """Stop the PgBouncer a previous server left running on `directory`'s ini; its pid."""
    try:
        pid = int((directory / "pgbouncer.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"pgbouncer" not in cmdline or str(directory / "pgbouncer.ini").encode() not in cmdline:
        return None
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), timeout=5, backoff=_POLL)
    return pid


class PgBouncer:
    """The pooler process, its configuration files and its admin console."""

    def __init__(
        self, binary: Path, directory: Path, *, user: OsUser, pg_host: str, pg_port: int,
        socket_dir: Path, mode: str = "transaction", version: tuple[int, ...] | None = None,
    ) -> None:
        self.binary = binary
        # where its socket goes: the instance's 0700 directory, where only the relay reaches it
        self.socket_dir = socket_dir
        self.mode = mode
        self.version = version or pgbouncer_version(binary)
        self.directory = directory
        self.user = user
        self.pg_host = pg_host
        self.pg_port = pg_port
        self.port = SOCKET_PORT
        self._admin_secret = secrets.token_urlsafe(24)
        self._users: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._console: asyncpg.Connection | None = None
        self._console_lock = asyncio.Lock()

    @property
    def ini(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def auth_file(self) -> Path:
        return self.directory / "userlist.txt"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pgbouncer.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "pgbouncer.log"

    @property
    def prepared_statements(self) -> bool:
        return carries_prepared_statements(self.version, self.mode)

    @property
    def socket_file(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _fail(self, message: str) -> LocalServerError:
        return LocalServerError(message, hint=f"see {self.log_file}")

    # --- files -----------------------------------------------------------------------

    def _load_users(self) -> None:
        """Users of a previous server process, so pooled logins work before ensure_role."""
        try:
            text = self.auth_file.read_text()
        except OSError:
            return
        for line in text.splitlines():
            parts = line.strip().split('" "')
            if len(parts) == 2:
                user, secret = (p.strip('"').replace('""', '"') for p in parts)
                if user != ADMIN_USER:
                    self._users[user] = secret

    def _write(self, path: Path, text: str) -> None:
        # A new file renamed into place: the directory belongs to PgBouncer's user, and
        # a link planted there must not make us write (or hand over) a file of ours.
        write_private(path, text, owner=(self.user.uid, self.user.gid) if self.user.switch else None)

    def _write_files(self) -> None:
        # A long random secret needs no key stretching; few rounds keep admin logins fast.
        admin = scram_verifier(self._admin_secret, iterations=_ADMIN_ITERATIONS)
        users = {**self._users, ADMIN_USER: admin}
        self._write(self.auth_file, "".join(_auth_line(u, s) for u, s in sorted(users.items())))
        # One fallback entry serves every database under its own name, so a new branch
        # needs no RELOAD (which would run beside every fork's copy): PgBouncer adds a
        # pool when the first client asks for it.
        databases = f"* = host={self.pg_host} port={self.pg_port}\n"
        settings = {
            "listen_addr": "",
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.socket_dir),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "admin_users": ADMIN_USER,
            "pool_mode": self.mode,
            "default_pool_size": "20",  # the services' whole budget (10) fits in one branch's pool
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "1000",
            "server_login_retry": "1",
            "server_idle_timeout": "60",
            "server_connect_timeout": "5",
            # asyncpg and the seed's engines send these; PgBouncer 1.18 would refuse them.
            "ignore_startup_parameters": "extra_float_digits,jit",
            "logfile": str(self.log_file),
            "pidfile": str(self.pid_file),
            "log_connections": "0",
            "log_disconnections": "0",
            "log_pooler_errors": "1",
        }
        if tracks_prepared_statements(self.version):
            settings["max_prepared_statements"] = str(_MAX_PREPARED)
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write(self.ini, f"[databases]\n{databases}\n[pgbouncer]\n{body}")

    # --- process ---------------------------------------------------------------------

    def _stop_stale(self) -> None:
        stop_stale(self.directory)

    def _start_blocking(self) -> None:
        ensure_dir(self.directory, mode=0o700, owners={os.geteuid(), self.user.uid})
        chown_to(self.directory, self.user, 0o700)
        self._stop_stale()
        self._load_users()
        self._write_files()
        chown_to(self.log_file, self.user, 0o600, create=True)
        self._process = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.binary), "-q", str(self.ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(self.directory),
            env=minimal_env(self.directory),
            start_new_session=True,
            **self.user.popen_kwargs(),
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

        async def accepting() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise self._fail(f"PgBouncer exited at start (code {self._process.returncode})")
            try:
                conn = await self._admin()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False
            await conn.close()
            return True

        if not await wait_until_async(accepting, timeout=_START_TIMEOUT, backoff=_POLL):
            raise self._fail("PgBouncer did not accept connections")

    async def stop(self) -> None:
        if self._console is not None:
            self._console.terminate()
        self._console = None
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)

    # --- admin console ---------------------------------------------------------------

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=ADMIN_USER,
            password=self._admin_secret,
            database="pgbouncer",
            statement_cache_size=0,
            timeout=5,
        )

    async def _command(self, sql: str) -> None:
        """Run an admin command on the kept console connection (reconnecting once)."""
        async with self._console_lock:
            for attempt in (1, 2):
                if self._console is None or self._console.is_closed():
                    self._console = await self._admin()
                try:
                    await self._console.execute(sql)
                    return
                except (OSError, asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError):
                    self._console = None
                    if attempt == 2:
                        raise

    async def _reload(self) -> None:
        await asyncio.to_thread(self._write_files)
        try:
            await self._command("RELOAD")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._fail(f"PgBouncer reload failed ({type(exc).__name__})") from None

    def preset_user(self, user: str, verifier: str) -> None:
        """A user for the auth file `start` writes (no reload: it is not running yet)."""
        self._users[user] = verifier

    async def set_user(self, user: str, verifier: str) -> None:
        if self._users.get(user) == verifier:
            return
        self._users[user] = verifier
        await self._reload()
