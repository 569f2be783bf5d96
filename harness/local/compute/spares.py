"""Copies of a stopped parent made ahead of time, so that its next forks only start.

Copying a data directory is most of a fork from a stopped parent (about 100 of 150 ms
here); a template that xdist workers or a test run's branches fork again and again
does not change between those forks. So copies can be made while nothing waits (after a
fork, when a session starts) and a fork takes one by renaming it into place.

A spare is valid while its parent has not run since it was copied: every start and
every shutdown rewrites the parent's pg_control (state, checkpoint), so a spare carries
the digest of the pg_control it was copied with and is used only while the parent's
is the same. A copy during which the parent started is discarded at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

from cathouse_harness.local.compute.copying import copy_tree
from cathouse_harness.local.compute.instance import Instance, running_pid
from cathouse_harness.local.compute.layout import ComputeHome, owned_dir
from cathouse_harness.support.safe_paths import remove_tree


def digest(parent: Instance) -> str | None:
    """What identifies a stopped instance's state: a digest of its pg_control."""
    try:
        return hashlib.sha256((parent.paths.data / "global" / "pg_control").read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _folder(compute: ComputeHome) -> Path:
    return owned_dir(compute.base / "spares", compute.user)


def _owners(compute: ComputeHome) -> set[int]:
    return {compute.user.uid, os.geteuid()}


def _discard_stale(compute: ComputeHome, parent: Instance, keep: str) -> None:
    for entry in _folder(compute).iterdir():
        if entry.name.startswith(f"{parent.name}.") and not entry.name.startswith(keep):
            remove_tree(entry, owners=_owners(compute))


# parent instance -> held while spares of it are made (forks arriving together, as xdist
# workers' do, each ask for a refill: one makes them, the others leave)
_MAKING: dict[str, threading.Lock] = {}
_MAKING_LOCK = threading.Lock()


def prepare(parent: Instance, compute: ComputeHome, count: int) -> int:
    """Make spares of the stopped `parent` until `count` are ready (none while it runs);
    the number ready, or 0 when another thread is making them."""
    with _MAKING_LOCK:
        making = _MAKING.setdefault(str(parent.paths.data), threading.Lock())
    if not making.acquire(blocking=False):
        return 0
    try:
        return _prepare(parent, compute, count)
    finally:
        making.release()


def _prepare(parent: Instance, compute: ComputeHome, count: int) -> int:
    state = digest(parent)
    if state is None or running_pid(parent) is not None:
        return 0
    prefix = f"{parent.name}.{state}."
    _discard_stale(compute, parent, prefix)
    folder = _folder(compute)
    ready = [entry for entry in folder.iterdir() if entry.name.startswith(prefix)]
    for number in range(count - len(ready)):
        staging = folder / f".staging.{parent.name}.{os.getpid()}.{number}.{os.urandom(4).hex()}"
        copy_tree(parent.paths.data, staging, owner=parent.owner)
        if running_pid(parent) is not None or digest(parent) != state:
            remove_tree(staging, owners=_owners(compute))  # the parent ran meanwhile
            break
        spare = folder / f"{prefix}{os.getpid()}.{number}.{os.urandom(4).hex()}"
        staging.rename(spare)
        ready.append(spare)
    return len(ready)


def take(parent: Instance, compute: ComputeHome, target: Path) -> bool:
    """Move a valid spare of the stopped `parent` to `target`; False when none is ready."""
    state = digest(parent)
    folder = compute.base / "spares"
    if state is None or not folder.is_dir() or running_pid(parent) is not None:
        return False
    prefix = f"{parent.name}.{state}."
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(prefix):
            # another fork may take the same one first: rename is atomic, the loser moves on
            with contextlib.suppress(FileNotFoundError):
                entry.rename(target)
                return True
    return False
