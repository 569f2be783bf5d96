"""Our fixtures that a project's own shadow: said once, after collection.

A project often has a `database_url` or `db_session` fixture of its own. pytest then
gives its tests theirs (as it should) and nothing says that the branch no longer reaches
them; `neon_branch` is the name to feed theirs from.

Without xdist the line is printed after collection. Under xdist the controller collects
nothing: each worker works the lines out from its own collection and hands them over in
`workeroutput` (with the other lines said after collection: `early.restored_line`); the
controller prints each distinct line once, in its summary.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest

# The public fixtures of fixtures.py; neon_branch is the one we ask projects to leave alone.
PUBLIC_FIXTURES = (
    "neon_branch",
    "database_url",
    "migration_database_url",
    "service_engine",
    "db_session",
    "reset_branch",
    "branch_per_test",
)
_OURS = "pytest_cathouse_harness.fixtures"
# the key of xdist's workeroutput a worker's lines travel under
WORKER_KEY = "cathouse_shadowed"
_FEED = {
    "database_url": "neon_branch.database_url",
    "migration_database_url": "neon_branch.migration_database_url",
}


def _where(func: Any, root: Path) -> str:
    try:
        path = Path(inspect.getsourcefile(func) or "?")
        line = inspect.getsourcelines(func)[1]
    except (OSError, TypeError):
        return getattr(func, "__module__", "?")
    try:
        shown = os.path.relpath(path, root)
    except ValueError:
        shown = str(path)
    return f"{shown}:{line}"


def shadowed_lines(items: list[pytest.Item], root: Path) -> list[str]:
    """One line per fixture of ours that a fixture of the project's shadows for some
    collected test (the definition pytest gives that test is the project's)."""
    found: dict[str, list[str]] = {}
    for item in items:
        # what pytest resolved for this test, last definition winning (no public accessor)
        info = getattr(item, "_fixtureinfo", None)
        definitions = getattr(info, "name2fixturedefs", None) or {}
        for name in PUBLIC_FIXTURES:
            defs = definitions.get(name) or ()
            if name in found or not defs or getattr(defs[-1].func, "__module__", "") == _OURS:
                continue
            if any(getattr(d.func, "__module__", "") == _OURS for d in defs):
                found[name] = [_where(defs[-1].func, root)]
    return [
        f"cathouse-harness: your fixture `{name}` ({', '.join(where)}) shadows the harness's; "
        f"to give it the branch, take `neon_branch` ({_FEED.get(name, 'neon_branch')}), the "
        "name the harness keeps stable"
        for name, where in found.items()
    ]


def hand_to_controller(config: pytest.Config, lines: list[str]) -> None:
    """In an xdist worker: leave this worker's lines where its controller reads them when
    the worker finishes (`workeroutput` exists only in a worker)."""
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output[WORKER_KEY] = lines


def take_from_worker(output: dict[str, Any], known: list[str]) -> None:
    """In the controller: add a finished worker's lines to `known`, each once (workers
    that collected the same tests find the same shadows)."""
    for line in output.get(WORKER_KEY) or ():
        if line not in known:
            known.append(line)
