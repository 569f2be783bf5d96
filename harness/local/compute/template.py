"""A home's pristine data directory per PostgreSQL installation: initdb once, copy after.

initdb takes about a second; copying its result takes a few tens of milliseconds. So a
home runs initdb once per installation (binaries and version) into a template that is
never started, and every root instance starts as a copy of it. The template is the
home's own (its OS user owns the files), which is why it is not shared between homes.

What initdb makes here differs from today's shared cluster in three ways: the bootstrap
superuser has a password (SCRAM over the socket, nothing is `trust`: a client the relay
passes through must never become the superuser by naming it), WAL segments are 1 MiB
(a fork copies the segments its backup needs, not 16 MiB each), and the settings below
are those of a small instance.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import locations
from cathouse_harness.local.compute import extensions
from cathouse_harness.local.compute.instance import failure, run_as
from cathouse_harness.local.compute.layout import ComputeHome, owned_dir
from cathouse_harness.local.pg_choice import PgInstall
from cathouse_harness.local.pg_layout import COMMON_SETTINGS, SUPERUSER, Storage, conf_text
from cathouse_harness.support.locking import file_lock
from cathouse_harness.support.redact import Secret
from cathouse_harness.support.safe_paths import remove_tree, write_private

INITDB_ARGS = (
    "-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
    "--no-sync", "--no-instructions", "--wal-segsize=1",
)
INCLUDE = "\n# cathouse-harness: the settings of a small instance\ninclude = 'cathouse.conf'\n"
HBA_CONF = (
    "# cathouse-harness: every role, the superuser too, by password over the instance's socket\n"
    "local   all  all  scram-sha-256\n"
)

# A small instance: many run at once on a developer's machine, each with a few pools.
# shared_buffers and max_connections set the shared memory; the processes an idle
# instance keeps (checkpointer, background writer, WAL writer, autovacuum launcher) are
# what remains. wal_level=replica is what PostgreSQL's backup functions need for a fork
# of a running instance; no WAL sender runs.
SMALL_INSTANCE: dict[str, str | int] = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    # Neon's smallest compute (0.25 CU): 104, seven of them kept for its superuser
    "max_connections": 104,
    "superuser_reserved_connections": 7,
    "shared_buffers": "16MB",
    "wal_buffers": "1MB",
    "max_wal_senders": 0,
    "max_replication_slots": 0,
    "max_worker_processes": 4,
    "max_logical_replication_workers": 0,
    "wal_level": "replica",
    "min_wal_size": "4MB",
    "max_wal_size": "64MB",
    # the WAL a point in time is replayed from (`pitr`): what a branch wrote since its
    # base stays this long in pg_wal, in the instance's own directory
    "wal_keep_size": "128MB",
    "huge_pages": "off",
    **COMMON_SETTINGS,
}
# PostgreSQL 18 reads through I/O worker processes by default: three more processes an
# idle instance keeps; plain synchronous reads are enough for a test database
_BY_MAJOR: dict[str, dict[str, str | int]] = {"18": {"io_method": "sync"}}
_IN_MEMORY: dict[str, str | int] = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class Template:
    key: str
    data: Path
    install: PgInstall
    superuser_password: Secret


def settings_text(install: PgInstall, storage: Storage, more: dict[str, str] | None = None) -> str:
    settings = dict(SMALL_INSTANCE)
    settings.update(_BY_MAJOR.get(install.major, {}))
    if storage == "memory":
        settings.update(_IN_MEMORY)
    settings.update(more or {})
    return conf_text(settings)


def _key(compute: ComputeHome, install: PgInstall) -> str:
    return locations.short_hash(
        f"{install.original.resolve()}|{install.version}|{compute.user.uid}|"
        f"{' '.join(INITDB_ARGS)}|{compute.storage}"
    )


def _owner(compute: ComputeHome) -> tuple[int, int] | None:
    return (compute.user.uid, compute.user.gid) if compute.user.switch else None


def ensure_template(compute: ComputeHome, install: PgInstall) -> Template:
    """The home's template for `install`, made now (initdb) when missing."""
    if int(install.major) < 15:
        raise LocalServerError(
            f"{install.describe()} is too old for an instance per branch",
            hint="PostgreSQL 15 or newer (pg_backup_start) is needed",
        )
    key = _key(compute, install)
    folder = compute.template_dir(key)
    secret_file = compute.state / f"superuser-{key}.secret"
    with file_lock(compute.state / f"template-{key}.lock"):
        # refreshed on every start: CATHOUSE_EXTRA_EXTENSIONS may have changed
        only_neons = extensions.prepare(compute.base, compute.base / "extensions" / key, install)
        if (folder / "data" / "PG_VERSION").exists() and secret_file.exists():
            # the settings as this version writes them (new instances copy them; a
            # template made before extension_control_path gets it here)
            write_private(folder / "data" / "cathouse.conf",
                          settings_text(install, compute.storage, only_neons), owner=_owner(compute))
            return Template(key, folder / "data", install, Secret(secret_file.read_text().strip()))
        remove_tree(folder, owners={compute.user.uid, os.geteuid()})
        owned_dir(folder, compute.user)
        password = secrets.token_urlsafe(24)
        pwfile = folder / "pwfile"
        write_private(pwfile, password + "\n", owner=_owner(compute))
        try:
            # interruptible: a stopped server start removes the half-made template's base
            # (in memory), or the next start makes it again (no secret file yet)
            result = run_as(compute.user, [str(install.bin_dir / "initdb"), "-D", str(folder / "data"),
                                           f"--pwfile={pwfile}", *INITDB_ARGS], cwd=folder,
                            interruptible=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise failure("initdb", result, folder / "data")
        data = folder / "data"
        # never through a link: the file is the instances' user's
        fd = os.open(data / "postgresql.conf", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            conf = handle.read()
        write_private(data / "postgresql.conf", conf + INCLUDE, owner=_owner(compute))
        settings = settings_text(install, compute.storage, only_neons)
        write_private(data / "cathouse.conf", settings, owner=_owner(compute))
        write_private(data / "pg_hba.conf", HBA_CONF, owner=_owner(compute))
        # the secret last: its presence says the template is whole
        write_private(secret_file, password)
        return Template(key, data, install, Secret(password))
