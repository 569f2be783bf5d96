"""Where an embedded cluster's files live, and the settings it is started with.

In memory (/dev/shm) or durable under the home; never loosening the permissions of the
user's own directories (when PostgreSQL's user cannot reach the home, the files go to our
own /var/tmp directory instead). The unix socket's directory moves to a short path when
the root is too deep for a socket name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cathouse_harness.errors import UnsafePathError
from cathouse_harness.local import locations
from cathouse_harness.local.pg_binaries import OsUser, can_reach
from cathouse_harness.support.safe_paths import check_dir, ensure_dir, private_home

SUPERUSER = "postgres"
Storage = Literal["memory", "disk"]

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


# what a new cluster's postgresql.conf gains: our settings, rewritten at every start
INCLUDE_OURS = (
    "\n# cathouse-harness settings, rewritten at every start\ninclude_if_exists = 'cathouse.conf'\n"
)
HBA_CONF = (
    "# cathouse-harness: the superuser only over the private socket, roles over loopback\n"
    f"local   all  {SUPERUSER}  trust\n"
    "host    all  all  127.0.0.1/32  scram-sha-256\n"
)


# what every PostgreSQL we run is told, whatever its size: SCRAM, quiet logs that never
# carry a statement, UTC, no JIT (its compile time costs more than small queries gain)
COMMON_SETTINGS: dict[str, str | int] = {
    "password_encryption": "scram-sha-256",
    "dynamic_shared_memory_type": "posix",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # statements may carry secrets; never log them
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "timezone": "UTC",
    "jit": "off",
}


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


def conf_text(settings: dict[str, str | int]) -> str:
    """Settings as lines of a PostgreSQL configuration file."""
    return "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
