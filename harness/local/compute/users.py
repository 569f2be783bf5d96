"""Who runs a home's instances: one OS user per home when we are root.

PostgreSQL refuses to run as root, so as root its binaries run as an unprivileged user.
Today's shared cluster uses one such user (`cathouse-pg`) for every home on the machine,
so a superuser session in one home's cluster (`COPY … FROM PROGRAM`) could read another
home's files. The instances of a home run as a user of that home alone,
`cathouse-pg-<hash of the home>`, made on first use; its data directories are 0700 and
its own, so one home's PostgreSQL cannot open another's. A non-root developer's homes all
run as that developer: they are one person's data already.

The account is recognised by its comment: a user of the same name that we did not make
is never adopted.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import locations
from cathouse_harness.local.pg_binaries import PG_SYSTEM_USER, OsUser, resolve_os_user

_COMMENT = "cathouse-harness compute"
# useradd takes a lock on /etc/passwd; parallel test workers making their users meet it
_ATTEMPTS = 5


def home_user_name(home: Path) -> str:
    """`cathouse-pg-<8 hex>`: short enough for every useradd (32 characters)."""
    return f"{PG_SYSTEM_USER}-{locations.short_hash(str(home.expanduser().resolve()))[:8]}"


def _entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _ours(entry: pwd.struct_passwd) -> bool:
    return entry.pw_gecos.startswith(_COMMENT) and entry.pw_uid != 0


def home_os_user(home: Path) -> OsUser:
    """The OS user the instances of `home` run as (made now when missing)."""
    if os.geteuid() != 0:
        return resolve_os_user()
    name = home_user_name(home)
    entry = _entry(name)
    for _attempt in range(_ATTEMPTS):
        if entry is not None:
            break
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--user-group",
                 "--shell", "/usr/sbin/nologin", "--comment", f"{_COMMENT} {home}", name],
                check=False, capture_output=True, timeout=30,
            )
        entry = _entry(name)
        if entry is None:
            time.sleep(0.05)
    if entry is None:
        raise LocalServerError(
            f"cannot create the OS user {name} that runs this home's PostgreSQL instances",
            hint=f"create it with: useradd --system --user-group --comment '{_COMMENT}' {name}",
        )
    if not _ours(entry):
        raise LocalServerError(
            f"the OS user {name} exists but was not made by cathouse-harness",
            hint="remove or rename that user, or use another harness home",
        )
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def home_user_uid(home: Path) -> int | None:
    """The uid of the home's OS user when one of ours exists (as root only)."""
    if os.geteuid() != 0:
        return None
    entry = _entry(home_user_name(home))
    return entry.pw_uid if entry is not None and _ours(entry) else None


def remove_home_user(home: Path) -> bool:
    """Delete the home's OS user (as root, once its instances are gone): True when one
    of ours was removed. Its files must be removed first; nothing here removes them."""
    if os.geteuid() != 0:
        return False
    entry = _entry(home_user_name(home))
    return entry is not None and _ours(entry) and _userdel(entry.pw_name)


def _userdel(name: str) -> bool:
    userdel = shutil.which("userdel") or "/usr/sbin/userdel"
    result = subprocess.run([userdel, name], check=False, capture_output=True, timeout=30)
    return result.returncode == 0


@dataclass(frozen=True)
class HomeUser:
    """One of our per-home OS users, and the home its comment names."""

    name: str
    uid: int
    home: Path


def orphaned_users() -> list[HomeUser]:
    """Our users whose home no longer exists (as root; none otherwise): a home removed
    without a clean stop of its server (a test's temporary directory, a killed server)
    leaves its user, and system uids are few (SYS_UID_MIN..SYS_UID_MAX)."""
    if os.geteuid() != 0:
        return []
    found = []
    for entry in pwd.getpwall():
        home = entry.pw_gecos.removeprefix(f"{_COMMENT} ")
        if (entry.pw_name.startswith(f"{PG_SYSTEM_USER}-") and _ours(entry)
                and home.startswith("/") and not Path(home).exists()):
            found.append(HomeUser(entry.pw_name, entry.pw_uid, Path(home)))
    return found


def remove_orphaned_user(user: HomeUser) -> bool:
    """Delete `user` (from `orphaned_users`) if it is still ours and its home still gone;
    the caller has checked that it runs nothing and owns nothing of ours."""
    entry = _entry(user.name)
    if entry is None or not _ours(entry) or entry.pw_uid != user.uid or user.home.exists():
        return False
    return _userdel(user.name)
