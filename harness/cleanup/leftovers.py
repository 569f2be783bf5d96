"""What finished runs and stopped servers leave behind, and the sweep that removes it.

`clean_leftovers(home)` runs when a local server starts and is meant for
`cathouse-branch gc`. It removes, for the current user:

- under `<home>/spares/`: the records of spares past their expiry;
- under `<home>/runs/`: the directories of runs whose owner process is gone (their
  `kept-*` markers only ever served that run's own sweep) once no marker of a branch
  is left in them, and empty run directories;
- a PostgreSQL (and its PgBouncer) still running on a cluster no server uses any more
  (its server was SIGKILLed): no process holds the cluster's lease; likewise every
  instance of the instance data plane (`cathouse_harness.local.compute.lease`);
- the cluster directories in /dev/shm, /var/tmp or `$XDG_RUNTIME_DIR` of homes that no
  longer exist (tens of MB of memory each), and their instances' directories with,
  as root, the per-home OS user that ran them (`local.compute.users`);
- as root, the per-home OS users whose home is gone, that run no process and own
  nothing in our shared directories (a home removed without a clean stop of its server);
- half-made `initdb-*.tmp-<pid>` and `pginstall-*.tmp-<pid>` copies of dead processes;
- initdb results kept for a fast first start (`initdb-*`, one per PostgreSQL install and
  so per venv) beyond the `KEEP_INITDB` used last.

`remove_all(home)` is `cathouse-branch gc --all`: the home itself and every directory of
ours in the shared places, for a user who is done with the harness on this machine. The
caches that other homes' running servers share (`local.compute.lease.hold_caches`) stay
while one runs, unless asked to stop those servers first (`--stop-others`).

It never touches a marker of a branch that may still exist (a watchdog may still be
deleting it), a cluster a live process holds, or anything that is not ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
from collections.abc import Iterator
from pathlib import Path

from cathouse_harness.branching.spares import forget_expired
from cathouse_harness.cleanup.runs import owned_files, owner_pid
from cathouse_harness.errors import LocalServerError, UnsafePathError
from cathouse_harness.local import locations
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.processes import pid_alive
from cathouse_harness.support.safe_paths import check_dir, remove_tree

log = get_logger("leftovers")

_STAGING = re.compile(r"(initdb|pginstall)-.+\.tmp-(\d+)")
_CLUSTER_NAMES = ("pg", "pg-memory", "compute/pg", "compute/pg-memory")
_INITDB = re.compile(r"initdb-[0-9a-f]+")
# initdb results kept (~40 MB each): the venvs used last; an older one's first start
# runs initdb again (a second or two)
KEEP_INITDB = 2
# what only a harness home holds: `remove_all` refuses a directory with none of it
_HOME_MARKS = ("local-api-key", "runs", "logs", "local-state.json", "local-state-disk.json")


def clean_leftovers(home: Path) -> list[str]:
    """Remove what earlier runs and servers of this user left; one line per removal."""
    owners = _owners()
    done = _clean_runs(home / "runs")
    done += forget_expired(home)  # records of spares past their expiry
    for root in _cluster_roots(home):
        done += _clean_cluster(root, owners)
    done += _clean_staging(owners)
    done += _bound_initdb(owners)
    done += forget_orphaned_users()
    for line in done:
        log.info("%s", line)
    return done


def _owners() -> frozenset[int]:
    """Who may own what we remove: us, and as root the shared `cathouse-pg` that ran
    every home's PostgreSQL before each branch had its own (#24), when it exists."""
    legacy = _legacy_user()
    return frozenset({os.geteuid()} | ({legacy.pw_uid} if legacy is not None else set()))


def _legacy_user() -> pwd.struct_passwd | None:
    from cathouse_harness.local.pg_binaries import PG_SYSTEM_USER

    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        return None


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
        done = _stop_orphans(root)
        home = _home_of(root)
        if home is not None and not home.is_dir() and home not in root.parents:
            user = _home_user(root, home)
            remove_tree(root, owners=owners | _uids(user))
            done.append(f"removed {root}: its home {home} is gone")
            done += _forget_user(home, user)
        return done
    finally:
        os.close(lease)


def _stop_orphans(root: Path) -> list[str]:
    """A PostgreSQL and PgBouncer still running on a cluster whose lease the caller holds,
    or on any instance of a compute base (each lays out `data/` and `pgbouncer/` alike)."""
    from cathouse_harness.local.compute.instance import fast_stop, postmaster_pid
    from cathouse_harness.local.data.pgbouncer import stop_stale

    done = []
    for place in (root, *_real_dirs(root / "instances")):
        pid = postmaster_pid(place / "data")
        if pid is not None:
            stuck = fast_stop(place / "data")
            if stuck is not None:
                raise LocalServerError(
                    f"PostgreSQL (pid {stuck}) in {place} still runs after a fast shutdown")
            done.append(f"stopped PostgreSQL (pid {pid}) that no server used, in {place}")
        bouncer = stop_stale(place / "pgbouncer")
        if bouncer is not None:
            done.append(f"stopped PgBouncer (pid {bouncer}) that no server used, in {place}")
    return done


def _home_user(root: Path, home: Path) -> int | None:
    """The uid of `home`'s own OS user when it owns `root` (a compute base, as root):
    who else may own the files to remove. A base whose `home` file names another home
    is owned by another user, and gains nothing by it."""
    from cathouse_harness.local.compute.users import home_user_uid

    uid = home_user_uid(home)
    try:
        return uid if uid is not None and os.lstat(root).st_uid == uid else None
    except OSError:
        return None


def _uids(uid: int | None) -> frozenset[int]:
    return frozenset() if uid is None else frozenset({uid})


def _forget_user(home: Path, uid: int | None, *, dry_run: bool = False) -> list[str]:
    """Delete `home`'s OS user once nothing of ours it owns is left (its other storage's
    base may still be there, removed by the next sweep)."""
    from cathouse_harness.local.compute.users import home_user_name, remove_home_user

    if uid is None:
        return []
    line = f"the OS user {home_user_name(home)} of {home}"
    if dry_run:
        return [f"would delete {line}"]
    if any(_owned_by(entry, uid) for base in _bases() for entry in _real_dirs(base)):
        return []
    return [f"deleted {line}"] if remove_home_user(home) else []


def forget_home_user(home: Path) -> list[str]:
    """Delete `home`'s OS user (as root) when no base of any home holds anything it
    owns: a server that removed its in-memory instances at a clean stop leaves nothing
    for a later sweep to find the user by."""
    from cathouse_harness.local.compute.users import home_user_uid

    return _forget_user(home, home_user_uid(home))


def forget_orphaned_users(*, dry_run: bool = False) -> list[str]:
    """Delete (as root) our per-home OS users whose home no longer exists, unless one
    still runs a process or owns a directory in our shared places other than its home's
    half-removed base (no lease: a removal stopped part way, which the cluster sweep
    cannot attribute; nothing runs in it, as its user runs nothing)."""
    from cathouse_harness.local.compute.users import orphaned_users, remove_orphaned_user

    orphans = orphaned_users()
    if not orphans:
        return []
    running = _process_owners()
    owned: dict[int, list[Path]] = {}
    for base in _bases():
        for entry in _real_dirs(base):
            if (uid := _owner(entry)) is not None:
                owned.setdefault(uid, []).append(entry)
    done = []
    for user in orphans:
        remains = owned.get(user.uid, [])
        abandoned = f"{locations.short_hash(str(user.home))}-compute"
        if user.uid in running or any(entry.name != abandoned or (entry / "lease").exists()
                                      for entry in remains):
            continue
        line = f"the OS user {user.name}: its home {user.home} is gone"
        if dry_run:
            done += [f"would remove {entry}" for entry in remains] + [f"would delete {line}"]
            continue
        for entry in remains:
            remove_tree(entry, owners=_owners() | {user.uid})
            done.append(f"removed {entry}: a half-removed base of {user.home}, which is gone")
        if remove_orphaned_user(user):
            done.append(f"deleted {line}")
    return done


def _process_owners() -> set[int]:
    """The uids that run a process now (the owners of /proc/<pid>)."""
    owners = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (uid := _owner(entry)) is not None:
            owners.add(uid)
    return owners


def _owner(path: Path) -> int | None:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _owned_by(path: Path, uid: int) -> bool:
    return _owner(path) == uid


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


def _bound_initdb(owners: frozenset[int]) -> list[str]:
    """All but the `KEEP_INITDB` initdb results used last (a start touches the one it copies)."""
    done = []
    for base in _bases():
        kept = sorted(
            (entry for entry in _real_dirs(base) if _INITDB.fullmatch(entry.name)),
            key=lambda entry: entry.stat().st_mtime, reverse=True,
        )
        for entry in kept[KEEP_INITDB:]:
            remove_tree(entry, owners=owners)
            done.append(f"removed {entry}: an initdb result not used lately")
    return done


# --------------------------------------------------------------------- gc --all


def remove_all(home: Path, *, project_root: Path, dry_run: bool = False,
               stop_others: bool = False) -> list[str]:
    """Everything the harness made on this machine: the local servers of `home` stopped,
    the clusters and instances no server uses (as root, with the per-home OS users that
    ran those instances), the caches in our shared directories, and `home` itself; one
    line per removal (`dry_run`: per removal it would make). What another running server
    (another home's) still uses stays, and is named, unless `stop_others` stops those
    servers first. Never the shared `cathouse-pg`."""
    from cathouse_harness.local.launch import stop_local_server

    verb = "would remove" if dry_run else "removed"
    done: list[str] = []
    home = home.expanduser().resolve()
    if not dry_run and home.is_dir() and stop_local_server(home):
        done.append(f"stopped the local server of {home}")
    owners = _owners()
    bases = _bases()
    if stop_others and not dry_run:
        done += _stop_others(bases)
    users: list[str] = []
    for base in bases:
        lines, used = _remove_clusters(base, owners, verb, dry_run=dry_run)
        done += lines
        users += used
    for base in bases:
        done += _remove_caches(base, owners, verb, dry_run=dry_run, users=users)
    done += _remove_home(home, project_root, verb, dry_run=dry_run)
    done += forget_orphaned_users(dry_run=dry_run)
    legacy = _legacy_user()
    if legacy is not None:
        done.append(f"kept the system user {legacy.pw_name} (made to run PostgreSQL as root "
                    f"before each home had its own): `userdel {legacy.pw_name}` removes it")
    return done


def _remove_clusters(base: Path, owners: frozenset[int], verb: str, *,
                     dry_run: bool) -> tuple[list[str], list[str]]:
    """The clusters in our directory `base` that no server uses; who uses the others
    (their homes, and the homes whose servers hold `base`'s caches)."""
    from cathouse_harness.local.compute.lease import cache_users

    done: list[str] = []
    users = [str(user) for user in cache_users(base)]
    for entry in _real_dirs(base):
        if not (entry / "lease").exists():
            continue
        lease = _unused(entry)
        if lease is None:
            users.append(str(_home_of(entry) or entry))
            done.append(f"kept {entry}: a running local server uses it")
            continue
        try:
            if not dry_run:
                done += _stop_orphans(entry)
            home = _home_of(entry)
            user = _home_user(entry, home) if home is not None else None
            done.append(_remove(entry, owners | _uids(user), verb, dry_run=dry_run))
            if home is not None:
                done += _forget_user(home, user, dry_run=dry_run)
        finally:
            os.close(lease)
    return done, users


def _remove_caches(base: Path, owners: frozenset[int], verb: str, *, dry_run: bool,
                   users: list[str]) -> list[str]:
    """The rest of `base`: initdb results, PostgreSQL copies, socket directories. While
    any server runs (`users`: the homes of those that do) they all stay: a running
    cluster's binaries and sockets, the initdb result a starting one copies."""
    caches = [entry for entry in _real_dirs(base) if not (entry / "lease").exists()]
    if users:
        if not caches:
            return []
        homes = sorted(set(users))
        who = (f"the running local server of {homes[0]} uses" if len(homes) == 1
               else f"the running local servers of {', '.join(homes)} use")
        names = ", ".join(sorted(entry.name for entry in caches))
        return [f"kept {base} ({names}): {who} it; `cathouse-branch gc --stop-others` stops "
                "them first"]
    done = [_remove(entry, owners, verb, dry_run=dry_run) for entry in caches]
    if not dry_run:
        with contextlib.suppress(OSError):
            base.rmdir()
    return done


def _stop_others(bases: list[Path]) -> list[str]:
    """Stop the local servers of other homes that use our shared directories (their
    clusters or instances there, or the caches), so that nothing of ours stays."""
    from cathouse_harness.errors import LocalServerError
    from cathouse_harness.local.compute.lease import cache_users
    from cathouse_harness.local.launch import stop_local_server

    homes = {home for base in bases for home in cache_users(base)}
    homes |= {home for base in bases for entry in _real_dirs(base)
              if (home := _home_of(entry)) is not None and (entry / "lease").exists()}
    done = []
    for home in sorted(homes):
        try:
            if home.is_dir() and stop_local_server(home):
                done.append(f"stopped the local server of {home}")
        except LocalServerError as exc:
            done.append(f"could not stop the local server of {home}: {exc}")
    return done


def _remove(entry: Path, owners: frozenset[int], verb: str, *, dry_run: bool) -> str:
    """Our directory gone; one of another user's (or a link) kept and named."""
    try:
        check_dir(entry, owners=owners)
    except (OSError, UnsafePathError) as exc:
        return f"kept {entry}: {exc}"
    if not dry_run:
        remove_tree(entry, owners=owners)
    return f"{verb} {entry}"


def _remove_home(home: Path, project_root: Path, verb: str, *, dry_run: bool) -> list[str]:
    if not home.exists():
        return []
    if home in (Path.home().resolve(), Path("/")) or home in project_root.resolve().parents \
            or home == project_root.resolve():
        return [f"kept {home}: it is not a directory of the harness's own"]
    try:
        check_dir(home)
    except (OSError, UnsafePathError) as exc:
        return [f"kept {home}: {exc}"]
    if not any((home / mark).exists() for mark in _HOME_MARKS):
        return [f"kept {home}: nothing in it was made by the harness"]
    if not dry_run:
        remove_tree(home)
    return [f"{verb} {home} (the harness home)"]
