"""What finished runs and stopped servers leave behind, and the sweep that removes it.

`clean_leftovers(home)` runs when a local server starts and is meant for
`cathouse-branch gc`. It removes, for the current user:

- under `<home>/runs/`: the directories of runs whose owner process is gone (their
  `kept-*` markers only ever served that run's own sweep) once no marker of a branch
  is left in them, and empty run directories;
- a PostgreSQL (and its PgBouncer) still running on a cluster no server uses any more
  (its server was SIGKILLed): no process holds the cluster's lease;
- the cluster directories in /dev/shm, /var/tmp or `$XDG_RUNTIME_DIR` of homes that no
  longer exist (tens of MB of memory each);
- half-made `initdb-*.tmp-<pid>` and `pginstall-*.tmp-<pid>` copies of dead processes.

It never touches a marker of a branch that may still exist (a watchdog may still be
deleting it), a cluster a live process holds, or anything that is not ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cathouse_harness.cleanup.runs import owned_files, owner_pid
from cathouse_harness.errors import UnsafePathError
from cathouse_harness.local import locations
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.safe_paths import check_dir, remove_tree

log = get_logger("leftovers")

_STAGING = re.compile(r"(initdb|pginstall)-.+\.tmp-(\d+)")
_CLUSTER_NAMES = ("pg", "pg-memory")


def clean_leftovers(home: Path) -> list[str]:
    """Remove what earlier runs and servers of this user left; one line per removal."""
    from cathouse_harness.local.postgres import resolve_os_user

    user = resolve_os_user()
    owners = frozenset({os.geteuid(), user.uid})
    done = _clean_runs(home / "runs")
    for root in _cluster_roots(home):
        done += _clean_cluster(root, owners)
    done += _clean_staging(owners)
    for line in done:
        log.info("%s", line)
    return done


# --------------------------------------------------------------------- runs


def _clean_runs(runs: Path) -> list[str]:
    done: list[str] = []
    for run in _real_dirs(runs):
        for entry in _real_dirs(run):
            pid = owner_pid(entry.name)
            if pid is not None and not pid_alive(pid) and not any(owned_files(w) for w in _real_dirs(entry)):
                remove_tree(entry)
                done.append(f"removed {entry} (its run ended)")
        for kept in run.glob("kept-*"):  # the layout before owner directories
            kept.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run.rmdir()
            done.append(f"removed empty {run}")
    return done


def _real_dirs(parent: Path) -> Iterator[Path]:
    """Directories (not links to them) in `parent`, if `parent` is one."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            yield entry


# --------------------------------------------------------------------- clusters


def _bases() -> list[Path]:
    """Our own per-user directories in the shared places, those that exist and are ours."""
    found = [
        locations.SHM_DIR / f"{locations.PREFIX}{os.geteuid()}",
        locations.VAR_TMP_DIR / f"{locations.PREFIX}{os.geteuid()}",
    ]
    runtime = env.read("XDG_RUNTIME_DIR")
    if runtime:
        found.append(Path(runtime) / "cathouse-harness")
    safe = []
    for base in found:
        try:
            check_dir(base)
        except FileNotFoundError:
            continue
        except (OSError, UnsafePathError) as exc:
            log.warning("not cleaning %s: %s", base, exc)
            continue
        safe.append(base)
    return safe


def _cluster_roots(home: Path) -> list[Path]:
    """Cluster directories: the home's own, and those in our shared directories that
    name their home (made by this version: the others are left alone)."""
    roots = [home / name for name in _CLUSTER_NAMES if (home / name).is_dir()]
    for base in _bases():
        roots += [entry for entry in _real_dirs(base) if (entry / "home").is_file()]
    return roots


def _clean_cluster(root: Path, owners: frozenset[int]) -> list[str]:
    lease = _unused(root)
    if lease is None:
        return []
    try:
        from cathouse_harness.local.pgbouncer import stop_stale
        from cathouse_harness.local.postgres import Cluster, resolve_os_user

        done = []
        cluster = Cluster(root, storage="memory", user=resolve_os_user(), install=Path("/"))
        pid = cluster.running_pid()
        if pid is not None:
            cluster.stop_blocking()
            done.append(f"stopped PostgreSQL (pid {pid}) that no server used, in {root}")
        bouncer = stop_stale(root / "pgbouncer")
        if bouncer is not None:
            done.append(f"stopped PgBouncer (pid {bouncer}) that no server used, in {root}")
        home = _home_of(root)
        if home is not None and not home.is_dir() and home not in root.parents:
            remove_tree(root, owners=owners)
            done.append(f"removed {root}: its home {home} is gone")
        return done
    finally:
        os.close(lease)


def _unused(root: Path) -> int | None:
    """The lease of `root` locked exclusively (nobody uses the cluster), else None."""
    try:
        fd = os.open(root / "lease", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # never started by this version, or not a plain file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _home_of(root: Path) -> Path | None:
    try:
        text = (root / "home").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(text) if text.startswith("/") else None


# --------------------------------------------------------------------- staging copies


def _clean_staging(owners: frozenset[int]) -> list[str]:
    done = []
    for base in _bases():
        for entry in _real_dirs(base):
            match = _STAGING.fullmatch(entry.name)
            if match and not pid_alive(int(match[2])):
                remove_tree(entry, owners=owners)
                done.append(f"removed {entry}: half made by a process that is gone")
    return done
