"""Trusting a path before using it: one set of checks for every file the harness touches.

/dev/shm, /var/tmp and /tmp are shared: any local user can create a name there before we
do, as a directory of their own or as a link to one of ours. So a directory the harness
uses outside its private home is made by us, or checked with `lstat` (a real directory,
not a link, owned by us, writable by nobody else) before anything in it is read, run or
removed; files are written as new files renamed into place (`mkstemp` opens with
O_EXCL, so a planted link is never followed); ownership and modes are changed through
a descriptor opened with O_NOFOLLOW. Inside a directory that passed these checks nobody
else can add or swap entries, which is what makes the paths below it safe to use.

A refusal is one line naming the path, what is wrong and the fix (exit code 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

from cathouse_harness.errors import UnsafePathError

# group or others may write: anyone could then add, swap or remove entries
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_dir(path: Path, *, owners: Collection[int] | None = None, setting: str | None = None) -> None:
    """Raise UnsafePathError unless `path` is a real directory (not a link), owned by one
    of `owners` (default: us) and not writable by group or others.

    `setting` names what the user can change to use another place instead.
    """
    allowed = set(owners) if owners is not None else {os.geteuid()}
    st = os.lstat(path)
    problem = ""
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid not in allowed:
        problem = f"belongs to {_user_name(st.st_uid)}, not to {_user_name(os.geteuid())}"
    if problem:
        elsewhere = f", or set {setting} to another place" if setting else ""
        raise UnsafePathError(
            f"refusing to use {path}: it {problem}",
            hint=f"another user may have made it; remove it{elsewhere}",
        )
    if st.st_mode & _SHARED_WRITE:
        raise UnsafePathError(
            f"refusing to use {path}: others may write to it (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"chmod go-w {path}",
        )


def set_mode(path: Path, mode: int, *, owner: tuple[int, int] | None = None,
             create: bool = False) -> None:
    """chmod (and chown to `owner`) through a descriptor that never follows a link;
    `create` makes an empty file first when there is none."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def ensure_dir(path: Path, *, mode: int, owners: Collection[int] | None = None,
               setting: str | None = None) -> Path:
    """`path` as a directory we can trust, with exactly `mode`: made now, or checked.

    Its parent must be trusted already, or be a shared sticky directory such as /tmp.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        check_dir(path, owners=owners, setting=setting)
    set_mode(path, mode)  # mkdir's mode passes through the umask
    return path


def private_home(path: Path) -> Path:
    """The harness home, made 0700 when missing; refused when another user owns it or
    others may write to it (they could swap the discovery file and receive the API key)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_dir(path, setting="CATHOUSE_HARNESS_HOME")
    return path


def write_private(path: Path, data: str | bytes, *, mode: int = 0o600,
                  owner: tuple[int, int] | None = None) -> None:
    """Atomically replace `path` with `data`, readable by the owner only (and owned by
    `owner` when given). The temporary file is created new, so no planted link is followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_tree(path: Path, *, owners: Collection[int] | None = None) -> bool:
    """Remove a directory tree after checking the directory itself (rmtree never follows
    links below it). False when there was nothing to remove."""
    try:
        check_dir(path, owners=owners)
    except FileNotFoundError:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def check_tree(root: Path, *, owners: Collection[int]) -> None:
    """Every entry under `root` (and `root`) is owned by one of `owners` and, links aside,
    writable by nobody else: what a tree must be before we run a binary from it."""
    check_dir(root, owners=owners)
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = Path(directory, name)
            st = os.lstat(full)
            if st.st_uid not in owners:
                raise UnsafePathError(
                    f"refusing to use {root}: {full} belongs to {_user_name(st.st_uid)}",
                    hint=f"remove {root}",
                )
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & _SHARED_WRITE:
                raise UnsafePathError(
                    f"refusing to use {root}: others may write to {full}", hint=f"remove {root}"
                )


def tree_digest(root: Path) -> dict[str, str]:
    """What a tree holds, for comparing a copy with its original: each entry's path
    mapped to its SHA-256 (files), its target (links) or its kind."""
    found: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    found[rel] = hashlib.file_digest(handle, "sha256").hexdigest()
            else:
                found[rel] = "other"
    return found
