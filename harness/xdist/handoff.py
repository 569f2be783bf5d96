"""The files through which an xdist worker gets its branch from the controller.

Under xdist the controller does the API work once for every worker (`cathouse_harness.xdist.broker`):
a worker that needs its branch asks for it here and waits for the answer, so it never
imports the client or starts a watchdog of its own. Everything lives in the run's own
directory inside the 0700 home (`runs/<run id>/<owner>/handoff/`):

    expect-<worker>    the worker's collected tests use a branch: fork it now (empty)
    request-<worker>   a test needs the branch now (also one that asked by name) (empty)
    branch-<worker>    the answer: the branch's ids, names and URLs, as JSON (0600)
    error-<worker>     or the line and exit code of the error that stopped the setup

A worker that keeps its branch says so with `runs.kept_marker`, as before. Nothing here
talks to the API.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathouse_harness.cleanup.runs import check_run_id, owner_pid, owner_token, run_dir, unchecked_run_dir
from cathouse_harness.errors import ConfigError, HarnessError, RelayedError
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.redact import Secret, register_url
from cathouse_harness.support.safe_paths import write_private

if TYPE_CHECKING:
    from cathouse_harness.branching.lifecycle import BranchHandle
    from cathouse_harness.config.settings import Settings

EXPECT, REQUEST, BRANCH, ERROR = "expect-", "request-", "branch-", "error-"
# A template build migrates, and may wait up to 10 minutes for another run's build
# first; past this the controller is stuck, and a worker says so instead of hanging.
ANSWER_TIMEOUT = 1800.0
# How often a waiting worker looks for its answer: a fork takes 20-50 ms locally, and
# the wait lasts a setup at most, so the looks cost nothing worth counting.
POLL = 0.002
# How often it checks that the controller still runs (xdist ends its workers anyway)
ALIVE_EVERY = 0.1


def handoff_dir(settings: Settings, run_id: str) -> Path:
    """The run's handoff directory (the home checked and made, when missing)."""
    return run_dir(settings, run_id) / "handoff"


def handoff_path(settings: Settings, run_id: str) -> Path:
    """Where the handoff directory is, without making or checking anything: the
    controller looks there all run long, and a run that asks for no branch must leave
    no home behind."""
    return unchecked_run_dir(settings, run_id) / "handoff"


@dataclass(frozen=True)
class Prepared:
    """A worker's branch as the controller made it."""

    handle: BranchHandle
    backend: str  # "neon" or "embedded"


# ---------------------------------------------------------------------- the worker's side


def expect_branch(directory: Path, worker: str) -> None:
    _touch(directory, f"{EXPECT}{check_run_id(worker, key='worker')}")


def request_branch(directory: Path, worker: str) -> None:
    _touch(directory, f"{REQUEST}{check_run_id(worker, key='worker')}")


def _touch(directory: Path, name: str) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(directory / name, "")


def wait_for_branch(
    directory: Path, worker: str, *, controller_alive: Callable[[], bool] | None = None,
    timeout: float = ANSWER_TIMEOUT,
) -> Prepared:
    """Ask the controller for `worker`'s branch and wait for it; the error the controller
    met, or a HarnessError when it is gone or never answers."""
    request_branch(directory, worker)
    alive = controller_alive or _controller_alive
    checked = time.monotonic()
    # plain strings and os.path: this check runs every POLL, and Path costs more than the wait
    branch, error = str(directory / f"{BRANCH}{worker}"), str(directory / f"{ERROR}{worker}")

    def answered() -> bool:
        nonlocal checked
        if os.path.exists(branch) or os.path.exists(error):
            return True
        now = time.monotonic()
        if now - checked > ALIVE_EVERY:
            checked = now
            if not alive():
                raise HarnessError(
                    "the xdist controller ended before it handed out this worker's branch"
                )
        return False

    if not wait_until(answered, timeout=timeout, backoff=Backoff(POLL)):
        raise HarnessError(
            f"the xdist controller gave no branch within {timeout:.0f} s",
            hint="a run without -n shows what the setup is waiting for",
        )
    if os.path.exists(branch):
        return _read_branch(Path(branch))
    raise _read_error(Path(error))


def _controller_alive() -> bool:
    # A worker carries its controller's owner token, which starts with the controller's pid.
    from cathouse_harness.support.processes import pid_alive

    pid = owner_pid(owner_token())
    return pid is None or pid_alive(pid)


def _read_branch(path: Path) -> Prepared:
    from cathouse_harness.branching.lifecycle import BranchHandle

    data: dict[str, Any] = json.loads(path.read_text())
    direct, pooled = str(data["direct_url"]), str(data["pooled_url"])
    # this process's scrubbing must know them before any test can print them
    register_url(direct)
    register_url(pooled)
    handle = BranchHandle(
        project_id=str(data["project_id"]), id=str(data["id"]), name=str(data["name"]),
        parent_id=data.get("parent_id"), endpoint_id=str(data["endpoint_id"]),
        direct_url=Secret(direct), pooled_url=Secret(pooled),
        created_seconds=float(data.get("created_seconds", 0.0)), database=data.get("database"),
    )
    return Prepared(handle, str(data["backend"]))


def _read_error(path: Path) -> HarnessError:
    data: dict[str, Any] = json.loads(path.read_text())
    line, exit_code = str(data["line"]), int(data["exit_code"])
    if data.get("config"):
        return ConfigError(line)  # the plugin reports a configuration problem as such
    return RelayedError(line, exit_code=exit_code)


# ---------------------------------------------------------------------- the controller's side


def scan(directory: Path) -> tuple[set[str], set[str]]:
    """The workers that expect to need a branch, and those that asked for theirs."""
    try:
        names = [entry.name for entry in directory.iterdir()]
    except FileNotFoundError:
        return set(), set()
    expecting = {name.removeprefix(EXPECT) for name in names if name.startswith(EXPECT)}
    return expecting, {name.removeprefix(REQUEST) for name in names if name.startswith(REQUEST)}


def answer(directory: Path, worker: str, handle: BranchHandle, *, backend: str) -> None:
    data = {
        "project_id": handle.project_id, "id": handle.id, "name": handle.name,
        "parent_id": handle.parent_id, "endpoint_id": handle.endpoint_id,
        "direct_url": str(handle.direct_url), "pooled_url": str(handle.pooled_url),
        "created_seconds": handle.created_seconds, "database": handle.database, "backend": backend,
    }
    write_private(directory / f"{BRANCH}{check_run_id(worker, key='worker')}", json.dumps(data))


def answer_error(directory: Path, worker: str, exc: BaseException) -> None:
    if isinstance(exc, HarnessError):
        data = {"line": str(exc), "exit_code": exc.exit_code, "config": isinstance(exc, ConfigError)}
    else:
        data = {"line": f"cathouse-harness: {type(exc).__name__}: {exc}", "exit_code": 1}
    write_private(directory / f"{ERROR}{check_run_id(worker, key='worker')}", json.dumps(data))
