"""A running server's claim on its home's instances, for the cleaners to read.

While a server uses a compute base it holds a shared lock on `<base>/lease`, and the
base names its home in `<base>/home`. A cleaner (`cathouse_harness.cleanup.leftovers`)
that locks the lease exclusively knows that no server uses those instances, so a
postmaster still running there is an orphan (its server was SIGKILLed); when the home is
gone as well, the instances' files and, as root, the home's OS user go too. The same two
files mark the shared plane's clusters, so one cleaner reads both.

Every running server also holds a shared lock on `servers/<home hash>` (naming its home)
in its user's /var/tmp directory, whose caches (initdb results, the copy of PostgreSQL's
binaries, short socket directories) every home of that user shares: `gc --all` leaves
them while any such lock is held, whichever plane and storage the server runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cathouse_harness.errors import UnsafePathError
from cathouse_harness.local import locations
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.support.safe_paths import ensure_dir, write_private

LEASE = "lease"
HOME = "home"
SERVERS = "servers"
# never a link the instances' user put there, and never inherited by a postmaster
_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def hold(compute: ComputeHome) -> int:
    """Name the home in its base and take the shared lock; the descriptor to release."""
    fd = os.open(compute.base / LEASE, _FLAGS | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a cleaner stops orphans here
        write_private(compute.base / HOME, str(compute.home))
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def hold_caches(home: Path, *, switch: bool) -> int | None:
    """Say that `home`'s server uses its user's caches, until the descriptor is released;
    None when there is no /var/tmp directory of ours (no caches there either: a directory
    there that is not safely ours is refused where a cache would be made, not here)."""
    try:
        base = locations.per_user_dir(locations.VAR_TMP_DIR, switch=switch)
        folder = ensure_dir(base / SERVERS, mode=0o700)
        fd = os.open(folder / locations.short_hash(str(home)), _FLAGS | os.O_CREAT, 0o600)
    except (OSError, UnsafePathError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # the same text from every server of the home (memory and disk): no torn read
        os.pwrite(fd, str(home).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def cache_users(base: Path) -> list[Path]:
    """The homes whose running servers hold `base`'s caches (see `hold_caches`)."""
    homes = []
    folder = base / SERVERS
    for entry in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []:
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 4096, 0).decode(errors="replace")
                homes.append(Path(text) if text.startswith("/") else entry)
        finally:
            os.close(fd)
    return homes
