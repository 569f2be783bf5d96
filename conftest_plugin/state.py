"""What the plugin keeps for the length of a pytest run, in the config's stash: one
object, reached by the hooks (plugin) and the fixtures alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from cathouse_harness.db.rollback import KeptConnections

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.db.guard import BranchOnly
    from cathouse_harness.errors import ConfigError, HarnessError
    from cathouse_harness.session.branch_session import BranchSession
    from cathouse_harness.xdist.broker import BranchBroker
    from pytest_cathouse_harness.progress import LiveLine


@dataclass
class HarnessState:
    settings: Settings | None
    settings_error: ConfigError | None
    run_id: str
    worker: str
    is_controller: bool
    session: BranchSession | None = None
    # xdist: the controller's broker sets up every worker's branch; a worker whose
    # controller runs one receives its branch from it (`prepared`)
    broker: BranchBroker | None = None
    prepared: bool = False
    worker_reports: list[dict[str, Any]] = field(default_factory=list)
    broker_report: dict[str, Any] | None = None
    swept: list[str] = field(default_factory=list)
    # xdist: the fixtures of ours the project shadows, as the workers found them (the
    # controller collects nothing); printed once in the summary
    shadowed: list[str] = field(default_factory=list)
    # xdist workers that came up, and those that finished normally (their own teardown
    # ran); the controller's sweep asks the API only when the two differ.
    workers_up: int = 0
    workers_finished: int = 0
    # the exit code a setup error stops the run with: under xdist a worker cannot
    # pytest.exit (xdist takes it for a crash), so the controller exits with it instead
    setup_exit: int | None = None
    saved_env: dict[str, str | None] = field(default_factory=dict)
    # what the branch made before the conftests set for the run (`early`), and the names
    # of it the project had removed by the end of collection (set again then)
    mapped: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    # a project with [tool.cathouse_harness.env] gets its branch before its conftests are
    # imported (`pytest_cathouse_harness.early`); what stopped that, reported by the
    # first test. `session_finished`: its teardown ran (the fixture's, or the run's end)
    early_error: HarnessError | None = None
    session_finished: bool = False
    # db_session's engines and the connections it keeps between tests
    connections: KeptConnections = field(default_factory=KeptConnections)
    # while the session holds a branch: the connection guard's policy, and the test
    # running now (what a refusal names)
    guard: BranchOnly | None = None
    # a configured run is guarded from before its conftests load, with no endpoint until
    # the branch exists (`guard.guard_before_branch`)
    guard_waits: bool = False
    current_test: str | None = None
    # what the setup waits for, on the terminal (`progress`)
    progress: LiveLine | None = None


state_key = pytest.StashKey[HarnessState]()
