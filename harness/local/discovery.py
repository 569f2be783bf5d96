"""Finding a running local server, as every test session does before its first API call.

This is the client's half of `cathouse_harness.local.server`, kept apart so that a process which
only looks for a server it can reuse imports nothing of the server (or of urllib's HTTP
stack): a warm session start is a few tens of milliseconds, and imports were a third of
it. A server is trusted only when its discovery file names a live pid and that pid
answers `/_local/info` on the published port with this home's key.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cathouse_harness.support import env
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.redact import Secret
from cathouse_harness.support.safe_paths import private_home

STORAGES = ("memory", "disk")
API_KEY_FILE = "local-api-key"
# /_local/info is a few hundred bytes; anything much longer is not our server.
_MAX_ANSWER = 1 << 20


@dataclass(frozen=True)
class PoolerInfo:
    """The PgBouncer behind a server's pooled endpoints (`cathouse_harness.local.data.pgbouncer`)."""

    mode: str
    version: str
    prepared_statements: bool

    @property
    def gap(self) -> str | None:
        """What it lacks of Neon's pooler, for a failure's hint; None when nothing."""
        return None if self.prepared_statements else f"PgBouncer {self.version} in {self.mode} mode"


def restart_hint(pid: int) -> str:
    """How to get a setting the home's running server was not started with: every
    session of the home shares it, and it keeps its start-time settings until it stops."""
    return f"stop it (kill {pid}) and start again; it also stops by itself when unused"


@dataclass(frozen=True)
class LocalServerInfo:
    """How to reach a running local server. The repr never shows the key."""

    api_host: str
    api_key: Secret = field(repr=False)
    project_id: str
    pid: int
    port: int
    home: Path
    # the bin directory of the PostgreSQL it runs and where that came from (wheel,
    # system, named); None for a server started before they were published
    postgres_bin: str | None = None
    postgres_origin: str | None = None
    # the databases and roles of the project's default branch (None: not published)
    databases: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    # None: no PgBouncer (pooled URLs reach PostgreSQL directly) or not published
    pooler: PoolerInfo | None = None


def resolve_home(home: Path | None) -> Path:
    if home is None:
        from cathouse_harness.config.settings import default_home

        given = env.read("CATHOUSE_HARNESS_HOME")
        home = Path(given) if given else default_home()
    return private_home(Path(home).expanduser().resolve())


def _suffix(storage: str) -> str:
    return "" if storage == "memory" else f"-{storage}"


def discovery_path(home: Path, storage: str = "memory") -> Path:
    return home / f"local-server{_suffix(storage)}.json"


def lock_path(home: Path, storage: str = "memory") -> Path:
    return home / f"local-server{_suffix(storage)}.lock"


def log_path(home: Path, storage: str = "memory") -> Path:
    return home / f"local-server{_suffix(storage)}.log"


def read_discovery(home: Path, storage: str) -> dict[str, Any] | None:
    try:
        data = json.loads(discovery_path(home, storage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def probe(api_host: str, api_key: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's `/_local/info`, or None when nothing (of ours) answers.

    One HTTP/1.0 request on a plain socket: the server closes the connection after the
    answer, so the body is whatever follows the headers.
    """
    parts = urlsplit(api_host)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        return None
    request = (
        f"GET {parts.path.rstrip('/')}/_local/info HTTP/1.0\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode("latin-1")
    received = bytearray()
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            sock.sendall(request)
            while len(received) <= _MAX_ANSWER:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    except (OSError, UnicodeError):
        return None
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def read_api_key(home: Path) -> str | None:
    """This home's Bearer key; None before any server has made one."""
    try:
        return (home / API_KEY_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def info_from(home: Path, data: dict[str, Any], api_key: str) -> LocalServerInfo:
    return LocalServerInfo(
        api_host=str(data["api_host"]),
        api_key=Secret(api_key),
        project_id=str(data["project_id"]),
        pid=int(data["pid"]),
        port=int(data["port"]),
        home=home,
        postgres_bin=data.get("postgres_bin"),
        postgres_origin=data.get("postgres_origin"),
        databases=_names(data.get("databases")),
        roles=_names(data.get("roles")),
        pooler=_pooler(data.get("pooler")),
    )


def _pooler(raw: Any) -> PoolerInfo | None:
    if not isinstance(raw, dict):
        return None
    return PoolerInfo(
        str(raw.get("mode")), str(raw.get("version")), bool(raw.get("prepared_statements"))
    )


def _names(raw: Any) -> tuple[str, ...] | None:
    return tuple(str(name) for name in raw) if isinstance(raw, list) else None


def live_server(home: Path, storage: str) -> LocalServerInfo | None:
    """The server published for this home and storage, if it is alive and answers."""
    data = read_discovery(home, storage)
    if not data:
        return None
    try:
        pid = int(data["pid"])
        api_host = str(data["api_host"])
    except (KeyError, TypeError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    api_key = read_api_key(home)
    if api_key is None:
        return None
    answer = probe(api_host, api_key)
    if not answer or answer.get("pid") != pid:
        return None
    known = {
        key: answer.get(key)
        for key in ("project_id", "postgres_bin", "postgres_origin", "databases", "roles", "pooler")
    }
    return info_from(home, {**data, **known}, api_key)


def running_server(home: Path | None = None, storage: str | None = None) -> LocalServerInfo | None:
    """The local server answering for this home (memory storage first), or None."""
    home = resolve_home(home)
    for kind in (storage,) if storage else STORAGES:
        info = live_server(home, kind)
        if info is not None:
            return info
    return None
