"""A run's files under the harness home and the owner token (the end-of-run sweep that
deletes a run's branches is `cathouse_harness.cleanup.sweep`).

`<home>/runs/<run id>/<owner>/<worker>/` is each process's watchdog marker directory (one
file per branch it still owns, see `cathouse_harness.cleanup.watchdog`); `kept-<branch id>` files in
`<home>/runs/<run id>/<owner>/` name branches kept on purpose. `<owner>` is the token of
the pytest process that started the run (`<pid>-<random>`; xdist workers take their
controller's), so two runs given the same run id never share a directory, and the xdist
controller's sweep removes its own run's branches and files only.

Nothing here talks to the API: the branch code, the watchdog and the local server's
cleaner all read these paths, so this module imports none of them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cathouse_harness.errors import ConfigError, SafetyError
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.safe_paths import private_home

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings

log = get_logger("runs")

_OWNED_PREFIXES = ("br-", "name-")
# A marker of a branch whose delete its owner asked for without waiting: the owner's
# watchdog confirms it (cathouse_harness.cleanup.watchdog); not owned any more, so no sweep asks the API.
DELETING = "deleting-"
# Run ids and worker names become directory names under runs/: no separators, no dot-dirs.
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Branch ids become marker file names.
_BRANCH_ID = re.compile(r"br-[a-z0-9-]+")
_OWNER = re.compile(r"(\d+)-[0-9a-f]{12}")

_owner = f"{os.getpid()}-{secrets.token_hex(6)}"


def owner_token() -> str:
    """This process's owner token, carried in its branches' annotation."""
    return _owner


def adopt_owner_token(token: str) -> None:
    """An xdist worker takes its controller's token: the controller's sweep then deletes
    the workers' branches, and only those."""
    global _owner
    if _OWNER.fullmatch(token) is None:
        raise ConfigError(f"{token[:80]!r} is not an owner token", key="cathouse_owner", source="xdist")
    _owner = token


def owner_pid(token: str) -> int | None:
    """The pid of the process that made `token` (None for what is not a token)."""
    match = _OWNER.fullmatch(token)
    return int(match[1]) if match else None


def check_run_id(value: str, *, key: str = "CATHOUSE_RUN_ID", source: str | None = None) -> str:
    """`value` when it is safe as one directory name under runs/; else a ConfigError."""
    if _RUN_ID.fullmatch(value) is None or value in (".", ".."):
        raise ConfigError(
            f"{value[:80]!r} is not a usable run id", key=key, source=source,
            hint="use 1 to 64 of the characters A-Z a-z 0-9 . _ - (not . or ..)",
        )
    return value


def branch_file_name(branch_id: str) -> str:
    """`branch_id` when it is safe as a file name (br-…); a SafetyError otherwise."""
    if _BRANCH_ID.fullmatch(branch_id) is None:
        raise SafetyError(
            f"refusing to use branch id {branch_id[:80]!r} as a file name",
            hint="branch ids look like br-<lowercase letters, digits and dashes>",
        )
    return branch_id


def runs_dir(settings: Settings) -> Path:
    return private_home(settings.home.expanduser().resolve()) / "runs"


def run_dir(settings: Settings, run_id: str) -> Path:
    """This process's (this xdist run's) own directory for `run_id`."""
    return runs_dir(settings) / check_run_id(run_id, key="run id") / _owner


def unchecked_run_dir(settings: Settings, run_id: str) -> Path:
    """Where `run_dir` is, without making or checking the home: for looking only."""
    return settings.home.expanduser().resolve() / "runs" / check_run_id(run_id, key="run id") / _owner


def marker_dir(settings: Settings, run_id: str, worker: str) -> Path:
    return run_dir(settings, run_id) / check_run_id(worker, key="worker")


def kept_marker(settings: Settings, run_id: str, branch_id: str) -> Path:
    """The file that names a branch kept on purpose, so the run's sweep leaves it."""
    return run_dir(settings, run_id) / f"kept-{branch_file_name(branch_id)}"


def kept_ids(directory: Path) -> set[str]:
    """The ids of the branches kept on purpose, from the `kept-` files in a run's directory."""
    return {path.name.removeprefix("kept-") for path in directory.glob("kept-*")}


def prune(marker_directory: Path) -> None:
    """Remove a marker directory and then its owner's and its run's directories, each
    only if empty (another worker or run may still use them)."""
    chain = [marker_directory, marker_directory.parent, marker_directory.parent.parent]
    if chain[2].parent.name != "runs":  # not a run's marker directory: leave its parents be
        chain = chain[:1]
    for directory in chain:
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def owned_files(worker_dir: Path) -> list[Path]:
    """One process's marker files of branches it still owns (or may own: a create whose
    answer never came)."""
    if not worker_dir.is_dir():
        return []
    return [path for path in worker_dir.iterdir() if path.name.startswith(_OWNED_PREFIXES)]


def owned_markers(directory: Path) -> list[Path]:
    """The owned marker files of every process of the run under `directory`."""
    return [path for worker in directory.iterdir() for path in owned_files(worker)]


def remove_run_dir(directory: Path) -> None:
    """Remove a run's directory, but for the marker directories of deletes a watchdog
    still confirms (`deleting-` files): that watchdog prunes them when done."""
    confirming = {path.parent for path in directory.glob(f"*/{DELETING}*")}
    if confirming:
        for entry in directory.iterdir():
            if entry in confirming:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()  # the run id's directory, unless another run uses it
    except OSError:
        pass
