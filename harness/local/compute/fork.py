"""A branch's instance from its parent's: a copy of the data directory, started.

A stopped parent (an idle template, a suspended branch) is consistent on disk, so its
data directory is copied as it is (`copying`: a clone where the filesystem can share
blocks, XFS or Btrfs, an in-kernel copy elsewhere, as on ext4 and tmpfs), or a spare
copy made ahead of time takes its place (`spares`).

A running parent is copied between `pg_backup_start` and `pg_backup_stop` in one admin
session, as any online backup: the files may change while they are copied, and the WAL
from the backup's checkpoint repairs them. The child starts with the `backup_label`
pg_backup_stop returns and the parent's WAL copied after the stop, so its startup
replays to a point after the backup's end: transactions committed by then are in the
child, and one still open in the parent has no commit record and is rolled back, as
after a crash. The child keeps the parent's timeline and system identifier, as a
Neon branch keeps its parent's history.
"""

from __future__ import annotations

from collections.abc import Callable

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute import spares
from cathouse_harness.local.compute.copying import copy_tree, overwrite_tree
from cathouse_harness.local.compute.instance import (
    Instance,
    admin_session,
    remove,
    running_pid,
    start,
)
from cathouse_harness.local.compute.layout import ComputeHome, instance_paths, owned_dir
from cathouse_harness.support.safe_paths import write_private

# what a copy of a running data directory leaves out: the postmaster's own lock files
# (a copied postmaster.pid names a live process and would stop the child from starting)
_NOT_COPIED = frozenset({"postmaster.pid", "postmaster.opts"})


def _new_instance(parent: Instance, compute: ComputeHome, name: str) -> Instance:
    paths = instance_paths(compute, name)
    if paths.root.exists():
        raise LocalServerError(f"instance {name} exists already", hint="fork under another name")
    owned_dir(paths.root, compute.user)
    return Instance(name, paths, compute.user, parent.install, parent.superuser_password)


def fork_stopped(parent: Instance, compute: ComputeHome, name: str, *, run: bool = True,
                 read_only: bool = False) -> Instance:
    """Copy a stopped parent's data directory; start the child when `run` (as a standby
    when `read_only`)."""
    if running_pid(parent) is not None:
        raise LocalServerError(f"instance {parent.name} runs", hint="stop it first, or fork it live")

    def fill(child: Instance) -> None:
        if not spares.take(parent, compute, child.paths.data):
            copy_tree(parent.paths.data, child.paths.data, owner=child.owner)

    return _made(parent, compute, name, fill, run, read_only)


def fork_live(parent: Instance, compute: ComputeHome, name: str, *, run: bool = True,
              read_only: bool = False) -> Instance:
    """Copy a running parent through its backup functions; start the child when `run`
    (as a standby when `read_only`)."""
    return _made(parent, compute, name, lambda child: _copy_live(parent, child), run, read_only)


def _made(parent: Instance, compute: ComputeHome, name: str, fill: Callable[[Instance], None],
          run: bool, read_only: bool) -> Instance:
    """A new instance `name` filled by `fill`, started when `run`; nothing left on failure.

    `read_only`: the child starts as a hot standby (`standby.signal`), as a Neon read
    replica is one: it serves reads and refuses every write whatever a session sets,
    since a standby cannot write at all. It follows nobody (no primary_conninfo): a
    read replica that follows its branch needs a WAL sender on the primary."""
    child = _new_instance(parent, compute, name)
    try:
        fill(child)
        if read_only:
            write_private(child.paths.data / "standby.signal", "", owner=child.owner)
        if run:
            start(child)
    except BaseException:
        remove(child)
        raise
    return child


def _copy_live(parent: Instance, child: Instance) -> None:
    target = child.paths.data
    with admin_session(parent) as session:
        # fast: an immediate checkpoint rather than one spread over checkpoint_timeout
        session.execute("SELECT pg_backup_start(%s, true)", (f"fork {child.name}",))
        try:
            copy_tree(parent.paths.data, target, owner=child.owner, vanishing=True, skip=_NOT_COPIED)
        finally:
            row = session.execute("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)").fetchone()
    if row is None:
        raise LocalServerError(f"pg_backup_stop returned nothing on instance {parent.name}")
    labelfile, spcmapfile = row
    # the WAL written while the files were copied, up to the backup's end and beyond
    owner = child.owner
    overwrite_tree(parent.paths.data / "pg_wal", target / "pg_wal", owner=owner)
    write_private(target / "backup_label", labelfile, owner=owner)
    if spcmapfile:
        write_private(target / "tablespace_map", spcmapfile, owner=owner)


def fork(parent: Instance, compute: ComputeHome, name: str, *, run: bool = True,
         read_only: bool = False) -> Instance:
    """The child of `parent` as it is now: copied stopped when it is stopped, else live."""
    if running_pid(parent) is None:
        return fork_stopped(parent, compute, name, run=run, read_only=read_only)
    return fork_live(parent, compute, name, run=run, read_only=read_only)
