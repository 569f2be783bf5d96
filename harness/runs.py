"""A run's files under the harness home, and the end-of-run sweep.

`<home>/runs/<run id>/<worker>/` is each process's watchdog marker directory (one file per
branch it still owns, see `harness.watchdog`); `kept-<branch id>` files beside them name
branches kept on purpose. The xdist controller sweeps the run when every worker is done.

Kept apart from `harness.session` so that the controller, which never starts a session
of its own, does not import the client (or asyncio) to find that there is nothing to do.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError, SafetyError
from harness.log import get_logger
from harness.safe_paths import private_home

if TYPE_CHECKING:
    from harness.settings import Settings

log = get_logger("runs")

_OWNED_PREFIXES = ("br-", "name-")
# Run ids and worker names become directory names under runs/: no separators, no dot-dirs.
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Branch ids become marker file names.
_BRANCH_ID = re.compile(r"br-[a-z0-9-]+")


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


def marker_dir(settings: Settings, run_id: str, worker: str) -> Path:
    check_run_id(run_id, key="run id")
    check_run_id(worker, key="worker")
    return runs_dir(settings) / run_id / worker


def kept_marker(settings: Settings, run_id: str, branch_id: str) -> Path:
    """The file that names a branch kept on purpose, so the run's sweep leaves it."""
    check_run_id(run_id, key="run id")
    return runs_dir(settings) / run_id / f"kept-{branch_file_name(branch_id)}"


def owned_files(worker_dir: Path) -> list[Path]:
    """One process's marker files of branches it still owns (or may own: a create whose
    answer never came)."""
    if not worker_dir.is_dir():
        return []
    return [path for path in worker_dir.iterdir() if path.name.startswith(_OWNED_PREFIXES)]


def owned_markers(directory: Path) -> list[Path]:
    """The owned marker files of every process of the run under `directory`."""
    return [path for worker in directory.iterdir() for path in owned_files(worker)]


def sweep_run(settings: Settings, run_id: str, *, all_finished: bool = False) -> list[str]:
    """Delete every session branch of a run (the xdist controller's final sweep).

    Only talks to the API when some process of this run recorded a branch, so a run that
    used no harness fixture stays free of API calls. With `all_finished` (every worker
    reported its own teardown) and no branch still recorded, there is nothing the API
    could find either, and the sweep only removes the run's files.
    """
    directory = runs_dir(settings) / check_run_id(run_id, key="run id")
    if not directory.exists():
        return []
    if all_finished and not owned_markers(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return []
    from harness.backend import connect_backend, open_client
    from harness.branches import delete_run_branches, run_prefix
    from harness.sync import LoopThread

    backend = connect_backend(settings)
    loop = LoopThread()
    try:
        kept = [p.name.removeprefix("kept-") for p in directory.glob("kept-*")]

        async def _sweep() -> list[str]:
            async with open_client(backend) as client:
                return await delete_run_branches(client, backend.project_id, run_id, keep=kept)

        deleted = loop.run(_sweep())
    finally:
        loop.close()
    shutil.rmtree(directory, ignore_errors=True)
    log.info("swept %d branch(es) of run %s (%s)", len(deleted), run_id, run_prefix(run_id))
    return deleted
