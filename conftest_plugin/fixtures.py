"""The plugin's fixtures. Their names are part of the public interface.

URL fixtures are plain strings from sync, session-scoped fixtures, so they work with
pytest-asyncio, anyio or no async at all. `service_engine` and `db_session` are
pytest-asyncio fixtures: asyncpg connections belong to the loop that opened them, and each
test gets its own loop by default.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest
import pytest_asyncio
from cathouse_harness.config.app_env import AppEnv, runtime_variables
from cathouse_harness.config.settings import Settings
from cathouse_harness.db.rollback import KeptConnections
from cathouse_harness.db.urls import endpoint_of
from cathouse_harness.errors import ConfigError, HarnessError
from cathouse_harness.support import env
from cathouse_harness.support.redact import redact_url
from pytest_cathouse_harness.guard import also_allowed, guard_branch, suspend_for_setup, unguard
from pytest_cathouse_harness.state import HarnessState, state_key

if TYPE_CHECKING:
    from cathouse_harness.branching.lifecycle import BranchHandle
    from cathouse_harness.session.branch_session import BranchSession
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


@dataclass(frozen=True)
class NeonBranch:
    """The session's branch as handed to tests."""

    id: str
    name: str
    parent_id: str | None
    project_id: str
    endpoint_id: str
    backend: str
    # pooled, for the services at runtime; direct, for migrations: in the `url_driver`
    # form (without one, postgresql+asyncpg:// and postgresql://)
    database_url: str
    migration_database_url: str
    pooled_url: str  # pooled, exactly as the API handed it out
    direct_url: str  # direct, exactly as the API handed it out
    # the database the URLs name: under xdist each worker's own (`cathouse_gw0`, see
    # `cathouse_harness.xdist.worker_databases`), else the configured one
    database: str

    def __repr__(self) -> str:
        return (
            f"NeonBranch(id={self.id!r}, name={self.name!r}, parent_id={self.parent_id!r}, "
            f"backend={self.backend!r}, database={self.database!r}, "
            f"database_url={redact_url(self.database_url)!r})"
        )


def _state(config: pytest.Config) -> HarnessState:
    return config.stash[state_key]


@pytest.fixture(scope="session")
def cathouse_settings(pytestconfig: pytest.Config) -> Settings:
    """The run's [tool.cathouse_harness] settings, with the environment's and the command
    line's overrides; a bad one stops the run in one line (exit 4)."""
    state = _state(pytestconfig)
    if state.settings is None:
        raise pytest.UsageError(f"cathouse-harness: {state.settings_error}")
    return state.settings


def _keep_policy(settings: Settings, backend: str) -> str:
    if settings.keep_branch:
        return settings.keep_branch
    if backend == "embedded" and not env.read("CI"):
        return "on-failure"
    return "never"


@pytest.fixture(scope="session")
def cathouse_branch_session(
    request: pytest.FixtureRequest, cathouse_settings: Settings
) -> Iterator[BranchSession]:
    """The machinery behind neon_branch: the session's branch set up (template, fork)
    on first use and deleted, or kept by keep_branch, at the end. Tests ask for
    neon_branch; this is for plugins that need the session itself."""
    from cathouse_harness.session.branch_session import BranchSession

    state = _state(request.config)
    if state.early_error is not None:
        stop_for_setup_error(request.config, request.session, state, state.early_error)
    if state.session is not None:  # made before the conftests were imported (`early`)
        session = state.session
    else:
        session = BranchSession(
            cathouse_settings, run_id=state.run_id, worker=state.worker, prepared=state.prepared,
            progress=state.progress,
        )
        state.session = session
        error: HarnessError | None = None
        suspend_for_setup(state)
        try:
            session.start()
        except HarnessError as exc:
            error = exc
        if error is not None:  # outside the except: its report is the one line, no chain
            session.finish()
            state.session_finished = True
            stop_for_setup_error(request.config, request.session, state, error)
    guard_branch(state, cathouse_settings, session.handle)
    try:
        yield session
    finally:
        try:
            finish_session(state, cathouse_settings, failed=request.session.testsfailed > 0)
        except HarnessError as exc:
            # One line naming the branch and its cleanup command, not a traceback.
            pytest.fail(str(exc), pytrace=False)
        finally:
            unguard(state)


def finish_session(state: HarnessState, settings: Settings, *, failed: bool) -> None:
    """The session's branch deleted, or kept by the keep policy; once (the fixture's
    teardown, or the run's end for a branch made before the conftests that no fixture
    asked for). A failed delete is a HarnessError, after the report notes it."""
    session = state.session
    if session is None or state.session_finished:
        return
    state.session_finished = True
    policy = _keep_policy(settings, session.report.backend)
    keep = policy == "always" or (policy == "on-failure" and failed)
    if keep and session.handle is not None:
        session.kept_urls = {  # type: ignore[attr-defined]
            "direct": str(session.handle.direct_url),
            "pooled": str(session.handle.pooled_url),
        }
    session.finish(keep=keep)


def stop_for_setup_error(
    config: pytest.Config, run: pytest.Session, state: HarnessState, exc: HarnessError
) -> NoReturn:
    """End the run on a setup error with its one line and a usage-error or failure code.

    An xdist worker must not `pytest.exit`: xdist takes a worker that ends mid-test for a
    crash and stops with an INTERNALERROR traceback. It errors this test (one line),
    asks to stop (xdist's controller then ends the run, "Interrupted: <line>") and hands
    the exit code to the controller through its output."""
    line = f"cathouse-harness: {exc}" if isinstance(exc, ConfigError) else str(exc)
    # pytest's own codes: a setting to fix is a usage error (4); anything else (a broken
    # migration, an unreachable backend) failed the run (1), never 3, which says pytest
    # itself broke
    usage = isinstance(exc, ConfigError) or exc.exit_code == 2
    code = pytest.ExitCode.USAGE_ERROR if usage else pytest.ExitCode.TESTS_FAILED
    if not hasattr(config, "workerinput"):
        pytest.exit(line, returncode=code)
    state.setup_exit = int(code)
    run.shouldstop = line
    pytest.fail(line, pytrace=False)


def _neon_branch(handle: BranchHandle, backend: str, settings: Settings) -> NeonBranch:
    variables = runtime_variables(
        AppEnv(), settings.url_driver, str(handle.pooled_url), str(handle.direct_url)
    )
    return NeonBranch(
        id=handle.id,
        name=handle.name,
        parent_id=handle.parent_id,
        project_id=handle.project_id,
        endpoint_id=handle.endpoint_id,
        backend=backend,
        database_url=variables["DATABASE_URL"],
        migration_database_url=variables["MIGRATION_DATABASE_URL"],
        pooled_url=str(handle.pooled_url),
        direct_url=str(handle.direct_url),
        database=endpoint_of(str(handle.direct_url)).database,
    )


def _point_env_at(branch: NeonBranch, settings: Settings) -> None:
    # Application settings read these (and the project's own names, when it maps them);
    # they must name this branch, never a real database. PGSSLROOTCERT: the embedded
    # default's CA, which DATABASE_URL (asyncpg's form) cannot carry.
    os.environ.update(
        runtime_variables(settings.env, settings.url_driver, branch.pooled_url, branch.direct_url)
    )


@pytest.fixture(scope="session")
def neon_branch(cathouse_branch_session: BranchSession) -> NeonBranch:
    """The session's migrated branch: id, name, parent, project, the pooled and direct
    URLs and the `database` they name. While it lives, DATABASE_URL and
    MIGRATION_DATABASE_URL point at it. The stable name to build your own fixtures on."""
    handle = cathouse_branch_session.handle
    assert handle is not None
    settings = cathouse_branch_session.settings
    branch = _neon_branch(handle, cathouse_branch_session.report.backend, settings)
    _point_env_at(branch, settings)
    return branch


@pytest.fixture
def branch_per_test(
    request: pytest.FixtureRequest, neon_branch: NeonBranch, cathouse_branch_session: BranchSession
) -> Iterator[NeonBranch]:
    """A branch of this test's own, forked from the migrated template and deleted after
    it: for code that commits across connections, where db_session's rollback cannot
    undo what it did. DATABASE_URL / MIGRATION_DATABASE_URL name it during the test, and
    `service_engine` and `db_session` use it. The `cathouse_branch_per_test` marker does
    the same without asking for the fixture."""
    session = cathouse_branch_session
    handle = session.fork_for_test()
    branch = _neon_branch(handle, session.report.backend, session.settings)
    _point_env_at(branch, session.settings)
    try:
        with also_allowed(_state(request.config), handle):
            yield branch
    finally:
        _point_env_at(neon_branch, session.settings)
        session.drop_test_branch(handle)


@pytest.fixture
def cathouse_test_branch(request: pytest.FixtureRequest, neon_branch: NeonBranch) -> NeonBranch:
    """The branch this test runs on: its own (branch_per_test, the marker) or the session's."""
    if "branch_per_test" in request.fixturenames or request.node.get_closest_marker(
        "cathouse_branch_per_test"
    ):
        branch: NeonBranch = request.getfixturevalue("branch_per_test")
        return branch
    return neon_branch


@pytest.fixture
def _cathouse_branch_per_test_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cathouse_branch_per_test") is not None:
        request.getfixturevalue("branch_per_test")


@pytest.fixture(scope="session")
def database_url(neon_branch: NeonBranch) -> str:
    """Pooled URL, as the services use at runtime: in the `url_driver` form, by default
    asyncpg's (`postgresql+asyncpg://…`)."""
    return neon_branch.database_url


@pytest.fixture(scope="session")
def migration_database_url(neon_branch: NeonBranch) -> str:
    """Direct URL, as migrations use it."""
    return neon_branch.migration_database_url


@pytest_asyncio.fixture(loop_scope="function")
async def service_engine(
    cathouse_test_branch: NeonBranch, cathouse_settings: Settings
) -> AsyncIterator[Callable[[str], AsyncEngine]]:
    """A factory: `service_engine("auth-service")` gives that service's async engine on the
    pooled URL, with the seed's settings and its pool budget. Engines are disposed after
    the test."""
    from cathouse_harness.db.engines import create_service_engine

    engines: dict[str, AsyncEngine] = {}

    def factory(name: str) -> AsyncEngine:
        if name not in engines:
            service = cathouse_settings.service(name)
            engines[name] = create_service_engine(
                service, cathouse_test_branch.pooled_url, pgbouncer=True
            )
        return engines[name]

    try:
        yield factory
    finally:
        for engine in engines.values():
            await engine.dispose()


def _fixture_loop_scope(config: pytest.Config) -> str:
    # db_session names no loop scope, so pytest-asyncio runs it on the loop of
    # `asyncio_default_fixture_loop_scope`, or a loop of its own (function) when unset.
    scope = config.getini("asyncio_default_fixture_loop_scope")
    return str(scope) if scope and scope != "function" else "function"


@pytest.fixture(scope="session")
def cathouse_connections(pytestconfig: pytest.Config) -> KeptConnections:
    """The connections db_session keeps between tests on a long-lived loop (one object for
    the run, in the plugin's state), closed at the end of the session."""
    return _state(pytestconfig).connections


@pytest_asyncio.fixture
async def db_session(
    request: pytest.FixtureRequest, cathouse_test_branch: NeonBranch,
    cathouse_branch_session: BranchSession, cathouse_connections: KeptConnections,
) -> AsyncIterator[AsyncSession]:
    """An AsyncSession inside a transaction that is rolled back after the test, even when
    the code under test commits (commits become savepoint releases).

    It runs on the loop of `asyncio_default_fixture_loop_scope` (a loop per test when
    unset). With a loop that outlives the test (module/session), one connection serves
    every test on that loop, a transaction per test; otherwise each test connects."""
    keep = _fixture_loop_scope(request.config) != "function"
    if keep and not cathouse_connections.holding:
        # Runs before the session fixtures set up earlier (the branch, the session's loop)
        # are torn down: kept connections close while their loop and branch still exist.
        request.session.addfinalizer(cathouse_connections.close_all)
    # a branch of the test's own goes away after it: no connection to it is kept
    session_branch = cathouse_branch_session.handle
    keep = keep and session_branch is not None and cathouse_test_branch.id == session_branch.id
    async with cathouse_connections.rolled_back_session(
        cathouse_test_branch.pooled_url, keep=keep, resets=lambda: cathouse_branch_session.resets
    ) as session:
        yield session


@pytest.fixture
def reset_branch(cathouse_branch_session: BranchSession) -> Iterator[Callable[[], None]]:
    """Call it to restore the session branch to its template at once; it also restores
    after the test. The `cathouse_reset` marker does the latter without asking."""
    yield cathouse_branch_session.reset
    cathouse_branch_session.reset()


@pytest.fixture
def _cathouse_reset_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("cathouse_reset")
    if marker is None:
        yield
        return
    session = request.getfixturevalue("cathouse_branch_session")
    yield
    session.reset()


# Each marker's fixture, joined to the tests that carry the marker only (the plugin's
# pytest_collection_modifyitems). As autouse fixtures they cost every test of every
# project in the environment a setup and a teardown, ~0.3 ms of CPU a test where nothing
# uses the harness (benchmarks/idle_plugin.py).
MARKER_FIXTURES = {
    "cathouse_branch_per_test": "_cathouse_branch_per_test_marker",
    "cathouse_reset": "_cathouse_reset_marker",
}


def join_marker_fixtures(item: pytest.Item) -> None:
    if not isinstance(item, pytest.Function):
        return
    marked = {mark.name for mark in item.iter_markers() if mark.name in MARKER_FIXTURES}
    if not marked:
        return
    names = item.fixturenames
    wanted = [f for m, f in MARKER_FIXTURES.items() if m in marked and f not in names]
    if not wanted:
        return
    # where pytest put an autouse fixture of ours: first of the function-scoped ones,
    # after the broader scopes it sets up before them (and tears down after them)
    at = next((i for i, name in enumerate(names) if _scope(item, name) == "function"), len(names))
    # a new list: parametrized tests share the old one, and pytest.param may mark only some
    item.fixturenames = [*names[:at], *wanted, *names[at:]]


def _scope(item: pytest.Function, name: str) -> str:
    """The scope of fixture `name` as pytest resolved it for `item` (function when it
    does not say: pytest has no public way to ask)."""
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).get(name)
    return str(definitions[-1].scope) if definitions else "function"
