"""A running server's claim on its home's instances, for the cleaners to read.

While a server uses a compute base it holds a shared lock on `<base>/lease`, and the
base names its home in `<base>/home`. A cleaner (`cathouse_harness.cleanup.leftovers`)
that locks the lease exclusively knows that no server uses those instances, so a
postmaster still running there is an orphan (its server was SIGKILLed); when the home is
gone as well, the instances' files and, as root, the home's OS user go too. The same two
files mark the shared plane's clusters, so one cleaner reads both.
"""

from __future__ import annotations

import fcntl
import os

from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.support.safe_paths import write_private

LEASE = "lease"
HOME = "home"
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
