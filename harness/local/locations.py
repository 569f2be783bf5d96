"""Where the embedded default keeps files outside the harness home, made safe to use.

/dev/shm (clusters in memory), /var/tmp (a copy of PostgreSQL's binaries, initdb results,
clusters PostgreSQL's user cannot reach in the home) and /tmp are shared with every local
user. We use each only through one directory per user, `cathouse-harness-<uid>`, that we
made or that `cathouse_harness.support.safe_paths` verified is ours and closed to others; everything
below it is then ours too. A user's own `$XDG_RUNTIME_DIR` (memory, private) is preferred
when PostgreSQL runs as that user.

The shared roots are module attributes so that tests can stand in directories of their
own for /dev/shm, /var/tmp and /tmp.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cathouse_harness.errors import UnsafePathError
from cathouse_harness.support import env
from cathouse_harness.support.safe_paths import check_dir, ensure_dir

SHM_DIR = Path("/dev/shm")
VAR_TMP_DIR = Path("/var/tmp")
PREFIX = "cathouse-harness-"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dir_mode(switch: bool) -> int:
    """Our directories are closed to others, except that PostgreSQL's own user (when we
    run it as another user, as root) must be able to pass through."""
    return 0o755 if switch else 0o700


def per_user_dir(parent: Path, *, switch: bool) -> Path:
    """`<parent>/cathouse-harness-<uid>`, made now or verified to be ours."""
    return ensure_dir(parent / f"{PREFIX}{os.geteuid()}", mode=dir_mode(switch))


def runtime_base(*, switch: bool) -> Path | None:
    """`$XDG_RUNTIME_DIR/cathouse-harness` when it is ours and PostgreSQL runs as us (its
    own user could not enter a 0700 runtime directory)."""
    runtime = env.read("XDG_RUNTIME_DIR")
    if switch or not runtime:
        return None
    try:
        check_dir(Path(runtime))
    except (OSError, UnsafePathError):
        return None
    return ensure_dir(Path(runtime) / "cathouse-harness", mode=0o700)


def memory_base(*, switch: bool) -> Path | None:
    """Where in-memory clusters go: the runtime directory, else /dev/shm; None without either."""
    runtime = runtime_base(switch=switch)
    if runtime is not None:
        return runtime
    if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK):
        return per_user_dir(SHM_DIR, switch=switch)
    return None


def _shared_parents() -> tuple[Path, Path, list[Path]]:
    """This uid's directories of ours in /dev/shm and /var/tmp, and in the runtime
    directory when one is set (not checked, not created)."""
    runtime = env.read("XDG_RUNTIME_DIR")
    return (SHM_DIR / f"{PREFIX}{os.geteuid()}", VAR_TMP_DIR / f"{PREFIX}{os.geteuid()}",
            [Path(runtime) / "cathouse-harness"] if runtime else [])


def memory_candidates(home: Path) -> list[Path]:
    """Every place an in-memory cluster of `home` may live (not checked, not created)."""
    tag = short_hash(str(home.expanduser().resolve()))
    shm, var_tmp, runtime = _shared_parents()
    return [shm / tag, var_tmp / f"{tag}-memory", *(parent / tag for parent in runtime)]


def shared_dirs_of(home: Path) -> list[Path]:
    """What `home`'s servers have in the shared places now (clusters, instances: each
    named after the home's hash), whichever plane and storage made them."""
    tag = short_hash(str(home.expanduser().resolve()))
    shm, var_tmp, runtime = _shared_parents()
    return [entry for parent in (shm, var_tmp, *runtime) if parent.is_dir()
            for entry in sorted(parent.glob(f"{tag}*"))]
