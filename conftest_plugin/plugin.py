"""Entry point of the plugin: hooks only. Fixtures live in `fixtures`, printing in `report`."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest
from cathouse_harness.cleanup.runs import adopt_owner_token, check_run_id, owner_token
from cathouse_harness.config.settings import INIT_HINT, Settings
from cathouse_harness.errors import ConfigError, HarnessError
from cathouse_harness.support import env
from pytest_cathouse_harness import report
from pytest_cathouse_harness.fixtures import (  # noqa: F401  (pytest finds fixtures by name here)
    _cathouse_branch_per_test_marker,
    _cathouse_reset_marker,
    branch_per_test,
    cathouse_branch_session,
    cathouse_connections,
    cathouse_settings,
    cathouse_test_branch,
    database_url,
    db_session,
    join_marker_fixtures,
    migration_database_url,
    neon_branch,
    reset_branch,
    service_engine,
)
from pytest_cathouse_harness.guard import fail_on_refusal, unguard
from pytest_cathouse_harness.options import (
    ENV_ISOLATED,
    add_options,
    project_configures_harness,
    read_settings,
)
from pytest_cathouse_harness.scrub import scrub_report
from pytest_cathouse_harness.shadowing import shadowed_lines
from pytest_cathouse_harness.state import HarnessState, state_key

# A URL on a host that can never resolve (RFC 6761): whatever reads it before the branch
# exists fails loudly instead of reaching a real database named in a shell or .env.
PLACEHOLDER_HOST = "branch-not-created-yet.invalid"
PLACEHOLDER_URL = f"postgresql+asyncpg://cathouse-harness@{PLACEHOLDER_HOST}/cathouse"
# Said under a failure that reached the placeholder: the resolver's own error names only
# the host, not why a test's DATABASE_URL holds it or how to give it the branch.
PLACEHOLDER_HINT = (
    f"DATABASE_URL / MIGRATION_DATABASE_URL still name {PLACEHOLDER_HOST}: no test in this "
    "process had asked for a harness fixture, so it had no branch yet. For code that reads "
    'them itself, add usefixtures = ["neon_branch"] to [tool.pytest.ini_options] '
    '(README, "The pytest plugin").'
)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    add_options(parser)
    parser.addini(
        "cathouse_harness_isolate_env",
        "replace DATABASE_URL / MIGRATION_DATABASE_URL for the whole test process",
        type="bool",
        default=True,
    )
    # With autoload off, `-p cathouse_harness` alone must still give working async
    # fixtures, so bring pytest-asyncio along under its usual name.
    if env.read("PYTEST_DISABLE_PLUGIN_AUTOLOAD") and not pluginmanager.has_plugin("asyncio"):
        try:
            import pytest_asyncio.plugin as asyncio_plugin
        except ImportError:
            return
        if not pluginmanager.is_registered(asyncio_plugin):
            pluginmanager.register(asyncio_plugin, "asyncio")


def _worker_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "main"


def _run_id(config: pytest.Config) -> str:
    """One id for the whole run: the controller picks it and xdist hands it to workers.

    It names directories under the home, so a value that is not one plain name is a
    ConfigError (`CATHOUSE_RUN_ID=..` once meant the home itself).
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput:
        return check_run_id(str(workerinput["testrunuid"]), key="testrunuid", source="xdist")
    given = getattr(config.option, "testrunuid", None)
    if given:
        return check_run_id(str(given), key="--testrunuid", source="command line")
    from_env = env.read("CATHOUSE_RUN_ID")
    run_id = check_run_id(from_env, source="environment") if from_env else uuid.uuid4().hex[:12]
    if hasattr(config.option, "testrunuid"):
        config.option.testrunuid = run_id
    return run_id


def _adopt_controller_owner(config: pytest.Config) -> None:
    """Workers carry their controller's owner token in their branches' annotation, so the
    controller's sweep removes this run's branches and never those of another run that
    was given the same run id."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("cathouse_owner"):
        adopt_owner_token(str(workerinput["cathouse_owner"]))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput["cathouse_owner"] = owner_token()
    state = node.config.stash.get(state_key, None)
    if state is None or state.settings is None:
        return
    if state.broker is None:
        # started with the first worker, idle until one asks for its branch
        from cathouse_harness.xdist.broker import BranchBroker

        state.broker = BranchBroker(state.settings, state.run_id)
        state.broker.start()
    node.workerinput["cathouse_broker"] = True


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cathouse_reset: restore the session branch to its template after this test"
    )
    config.addinivalue_line(
        "markers", "cathouse_branch_per_test: run this test on a branch of its own (forked "
        "from the migrated template, deleted after it)"
    )
    configured = project_configures_harness(config.rootpath) or any(
        config.getoption(name) is not None
        for name in ("cathouse_backend", "cathouse_parent", "cathouse_ttl", "cathouse_project")
    )
    settings: Settings | None = None
    error: ConfigError | None = None
    run_id = uuid.uuid4().hex[:12]  # stands in while a bad setting keeps the plugin idle
    try:
        settings = read_settings(config)
        run_id = _run_id(config)
        _adopt_controller_owner(config)
    except ConfigError as exc:
        if configured:
            raise pytest.UsageError(f"cathouse-harness: {exc}") from None
        settings, error = None, exc
    state = HarnessState(
        settings=settings,
        settings_error=error,
        run_id=run_id,
        worker=_worker_id(config),
        is_controller=not hasattr(config, "workerinput"),
        prepared=bool(getattr(config, "workerinput", {}).get("cathouse_broker")),
    )
    config.stash[state_key] = state
    if configured and config.getini("cathouse_harness_isolate_env"):
        for name in ENV_ISOLATED:
            state.saved_env[name] = os.environ.get(name)
            os.environ[name] = PLACEHOLDER_URL
    _terminate_as_interrupt()


# What a test asks for when it needs the session's branch: every branch fixture depends
# on the first; the markers ask for it when the test runs.
_BRANCH_FIXTURE = "cathouse_branch_session"
_BRANCH_MARKERS = ("cathouse_reset", "cathouse_branch_per_test")


def pytest_collection_finish(session: pytest.Session) -> None:
    """An xdist worker whose tests use a branch tells the controller now, so that the
    setup (client, parent, template) and this worker's fork run while xdist still waits
    for the other workers to collect."""
    state = session.config.stash.get(state_key, None)
    if state is None or not state.prepared or state.settings is None:
        return
    if session.config.option.collectonly or not any(_uses_branch(i) for i in session.items):
        return
    from cathouse_harness.xdist.handoff import expect_branch, handoff_dir

    try:
        expect_branch(handoff_dir(state.settings, state.run_id), state.worker)
    except (OSError, HarnessError):
        pass  # the first test asks again, and reports what is wrong


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        join_marker_fixtures(item)


def _uses_branch(item: pytest.Item) -> bool:
    if item.get_closest_marker("skip") is not None:
        return False
    names = getattr(item, "fixturenames", ())
    return _BRANCH_FIXTURE in names or any(item.get_closest_marker(m) for m in _BRANCH_MARKERS)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    state = item.config.stash.get(state_key, None)
    if state is not None:
        state.current_test = item.nodeid  # what a refused connection names
    try:
        return (yield)
    finally:
        if state is not None:
            state.current_test = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    fail_on_refusal(item.config.stash.get(state_key, None), report)
    if not item.config.getoption("cathouse_show_secrets"):
        scrub_report(report)
    if report.failed and PLACEHOLDER_HOST in report.longreprtext:
        report.sections.append(("cathouse-harness", PLACEHOLDER_HINT))
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if not collector.config.getoption("cathouse_show_secrets"):
        scrub_report(report)
    return report


def _terminate_as_interrupt() -> None:
    """Turn SIGTERM (CI cancelling a job) into KeyboardInterrupt so teardown runs."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        except ValueError:  # not the main thread
            pass


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is None:
        return
    _close_broker(state)  # when the session never finished (an internal error)
    unguard(state)  # likewise: this process's drivers go back as they were
    for name, value in state.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(state_key, None)
    if state is None or state.settings is None:
        return None
    if not project_configures_harness(config.rootpath):
        return None
    return report.header_line(state.settings)


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    if not project_configures_harness(config.rootpath):
        return []
    return shadowed_lines(items, config.rootpath)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(state_key, None)
    if state is None:
        return
    if hasattr(config, "workeroutput") and state.session is not None:
        config.workeroutput["cathouse_harness"] = state.session.report.as_dict()
        config.workeroutput["cathouse_setup_exit"] = state.setup_exit
    if state.is_controller and state.setup_exit is not None:
        # a worker's setup error: xdist ended the run as interrupted, this says why
        session.exitstatus = state.setup_exit
    _close_broker(state)
    if state.is_controller and state.settings is not None and _uses_xdist(config):
        from cathouse_harness.cleanup.sweep import sweep_run

        all_finished = (
            state.workers_up == state.workers_finished
            and exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
            and not any(report.get("delete_failed") for report in _reports(state))
        )
        try:
            state.swept = sweep_run(state.settings, state.run_id, all_finished=all_finished)
        except Exception as exc:  # the summary names the run so a person can clean up
            state.swept = [f"sweep failed: {exc}"]


def _close_broker(state: HarnessState) -> None:
    """Delete the workers' branches (those they did not keep); once, at the end of the run."""
    broker, state.broker = state.broker, None
    if broker is None:
        return
    report = broker.close()
    if report is not None:
        state.broker_report = report.as_dict()


def _reports(state: HarnessState) -> list[dict[str, Any]]:
    """Every report of the run: the controller's broker first (it names the backend and
    the template), then the workers', then this process's own session."""
    reports = [state.broker_report] if state.broker_report else []
    reports.extend(state.worker_reports)
    if state.session is not None:
        reports.append(state.session.report.as_dict())
    return reports


def _uses_xdist(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodeready(node: Any) -> None:
    state = node.config.stash.get(state_key, None)
    if state is not None:
        state.workers_up += 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    state = node.config.stash.get(state_key, None)
    if state is None:
        return
    if error is None:
        state.workers_finished += 1
    if state.broker is not None:  # its branch goes now, while xdist stops the others
        state.broker.release(str(node.workerinput["workerid"]))
    output = getattr(node, "workeroutput", {}) or {}
    if output.get("cathouse_setup_exit") is not None and state.setup_exit is None:
        state.setup_exit = int(output["cathouse_setup_exit"])
    data = output.get("cathouse_harness")
    if data is not None:
        state.worker_reports.append(data)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is None:
        return
    reports = _reports(state)
    if not reports and not state.swept:
        return
    show_secrets = bool(config.getoption("cathouse_show_secrets"))
    kept_urls = getattr(state.session, "kept_urls", None) if state.session else None
    for line in report.summary_lines(reports, state.run_id, state.swept, kept_urls, show_secrets):
        terminalreporter.write_line(line)
    if state.settings is not None and not state.settings.migrating_services:
        terminalreporter.write_line(f"  no service has migrations, so the branch has none: {INIT_HINT}")
