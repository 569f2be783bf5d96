"""The branch made before the project's conftest files are imported.

pytest imports the initial conftests (and, through them, the application and its
settings) from `pytest_load_initial_conftests`, before `pytest_configure`. A project that
maps its own variables onto the branch (`[tool.cathouse_harness.env]`) reads them right
there, so for such a project the plugin makes the session's branch in that hook (see
`plugin.pytest_load_initial_conftests`) and sets the variables before the first import.
A project without the table keeps the lazy path: no branch, no API call until a test asks
for a fixture.

Under xdist each process (the controller, which imports the conftests too, and every
worker) asks the controller's broker for a database of its own (the handoff files)
before its conftests load; xdist sets a worker's `workerinput` only after that hook, so the
worker takes its id and run id from the variables xdist sets first, and the controller's
owner token from `OWNER_VARIABLE`, which the controller's plugin sets for its workers.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.config.app_env import runtime_variables
from cathouse_harness.errors import HarnessError
from cathouse_harness.support import env
from pytest_cathouse_harness.state import HarnessState

# "<run id> <owner token>": the run id keeps a pytest started inside a worker's test
# (which inherits the variable) from taking itself for that worker
OWNER_VARIABLE = "CATHOUSE_XDIST_OWNER"
# a worker's pid, set by the worker once configured: a process that inherits the worker's
# variables (a pytest its tests start) sees another pid there and knows it is no worker
WORKER_PID_VARIABLE = "CATHOUSE_XDIST_WORKER_PID"
# the xdist controller's own database, asked of its broker as a worker would
CONTROLLER = "controller"


# without a mapping: what DATABASE_URL / MIGRATION_DATABASE_URL held before the plugin
# hid them from the conftests (the state that restores them is made in pytest_configure)
hidden_key = pytest.StashKey[dict[str, str | None]]()


def hide(names: tuple[str, ...], placeholder_url: str) -> dict[str, str | None]:
    """Set `names` to `placeholder_url`; what they held before, to put back at the end."""
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, placeholder_url))
    return saved


def maps_env(rootpath: Path) -> bool:
    """Whether the project's pyproject.toml (found from pytest's rootdir as the settings
    find it) has a [tool.cathouse_harness.env] table: a cheap look, the settings are read
    and checked here only for a project that has one."""
    from cathouse_harness.config.settings import find_project_root, read_harness_table

    if env.read("CATHOUSE_CONFIG") is not None:
        # a file outside the project stands in for its table: read it as the settings do
        try:
            table, _ = read_harness_table(find_project_root(rootpath))
        except HarnessError:
            return False  # the settings' own reading reports it, in one line
        return "env" in table
    try:
        text = (find_project_root(rootpath) / "pyproject.toml").read_text(encoding="utf-8")
        # the plugin loads into every run of its environment: parse only our projects'
        data = tomllib.loads(text) if "[tool.cathouse_harness" in text else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # the settings' own reading reports a broken file, with its line
    table = data.get("tool", {}).get("cathouse_harness", {})
    return isinstance(table, dict) and "env" in table


def early_workerinput() -> dict[str, Any] | None:
    """What xdist's `workerinput` will say, for a worker before it exists: its id and run
    id, and whether its controller's plugin serves branches (and with which owner)."""
    worker, run_id = env.read("PYTEST_XDIST_WORKER"), env.read("PYTEST_XDIST_TESTRUNUID")
    if not worker or not run_id or env.read(WORKER_PID_VARIABLE) not in (None, str(os.getpid())):
        return None
    found: dict[str, Any] = {"workerid": worker, "testrunuid": run_id}
    owner_run, _, token = (env.read(OWNER_VARIABLE) or "").partition(" ")
    if owner_run == run_id and token:
        found["cathouse_owner"] = token
        found["cathouse_broker"] = True
    return found


def owner_value(run_id: str, token: str) -> str:
    return f"{run_id} {token}"


def will_distribute(options: Any) -> bool:
    """Whether this (not yet configured) process is going to be an xdist controller."""
    if getattr(options, "numprocesses", None):
        return True
    dist = getattr(options, "dist", "no")
    return bool(getattr(options, "distload", False)) or (dist != "no" and bool(getattr(options, "tx", None)))


def set_variables(state: HarnessState, values: Mapping[str, str]) -> None:
    """Set `values` for the run; the first value each name had is put back at its end."""
    for name, value in values.items():
        state.saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def branch_before_conftests(state: HarnessState, placeholder_url: str, *, controller: bool) -> None:
    """Point the project's names at a host that cannot resolve, then make this process's
    branch and point them at it. An xdist controller starts its broker now and takes a
    database of its own from it like a worker (`CONTROLLER`): it runs no tests, but it
    imports the same conftests, and one that connects at import must reach the branch
    there too. A setup error is kept for the first test to report (`state.early_error`):
    raising here would end pytest with a traceback."""
    settings = state.settings
    assert settings is not None
    set_variables(state, runtime_variables(settings.env, settings.url_driver, placeholder_url,
                                           placeholder_url))
    from cathouse_harness.session.branch_session import BranchSession

    worker, prepared = state.worker, state.prepared
    if controller:
        from cathouse_harness.xdist.broker import BranchBroker

        # the controller imports the project's conftests once its own database is made
        state.broker = BranchBroker(settings, state.run_id, apart=True, progress=state.progress)
        state.broker.start()
        worker, prepared = CONTROLLER, True
    # no conftest of the project is imported yet: its modules must not be either; the
    # broker's setup, when there is one, is what the live line follows
    session = BranchSession(settings, run_id=state.run_id, worker=worker, prepared=prepared, apart=True,
                            progress=None if controller else state.progress)
    try:
        handle = session.start()
    except KeyboardInterrupt:
        # what the start made goes now: no later hook runs for a run stopped here
        with contextlib.suppress(Exception):
            session.finish()
        raise
    except HarnessError as exc:
        state.early_error = exc
        with contextlib.suppress(HarnessError):
            session.finish()
        return
    state.session = session
    from pytest_cathouse_harness.guard import guard_branch

    guard_branch(state, settings, handle)
    state.mapped = runtime_variables(
        settings.env, settings.url_driver, str(handle.pooled_url), str(handle.direct_url)
    )
    set_variables(state, state.mapped)


def restore_removed(state: HarnessState) -> list[str]:
    """Set again the names of the branch's variables that are gone by the end of
    collection, and say which. A project may clear its own prefix from pytest_configure
    so that a shell's settings stay out of its tests (quetz deletes every QUETZ_*); its
    tests would then fall back to a default of its own (an SQLite file) and pass without
    the branch. Only removed names come back: one the project set to a value of its own
    is its choice, and a fixture that sets one later runs after this."""
    removed = [name for name in state.mapped if name not in os.environ]
    for name in removed:
        os.environ[name] = state.mapped[name]
    return removed


def restored_line(names: list[str]) -> str:
    return (
        f"cathouse-harness: {', '.join(names)} (set for the branch from "
        "[tool.cathouse_harness.env]) had been removed by the end of collection, by a "
        "pytest_configure or conftest of the project's; set again for the tests"
    )


def failed_import(state: HarnessState | None) -> pytest.UsageError | None:
    """A conftest that failed to import after the branch's setup failed met the
    placeholder: the setup's line is the error to show, not the import's traceback."""
    if state is None or state.early_error is None:
        return None
    line = str(state.early_error)
    # a failed step's line names the harness already ("cathouse-harness: template step …")
    return pytest.UsageError(line if line.startswith("cathouse-harness:") else f"cathouse-harness: {line}")
