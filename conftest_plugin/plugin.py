"""Entry point of the plugin: hooks only. Fixtures live in `fixtures`, printing in `report`."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from typing import Any, NoReturn

import pytest
from cathouse_harness.cleanup.runs import adopt_owner_token, check_run_id, owner_token
from cathouse_harness.config.settings import INIT_HINT, Settings
from cathouse_harness.errors import ConfigError, HarnessError
from cathouse_harness.support import env
from pytest_cathouse_harness import report
from pytest_cathouse_harness.asyncio_mode import adopt_asyncio_defaults
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
    finish_session,
    join_marker_fixtures,
    migration_database_url,
    neon_branch,
    reset_branch,
    service_engine,
    stop_for_setup_error,
)
from pytest_cathouse_harness.guard import adopt_early_guard, fail_on_refusal, guard_before_branch, unguard
from pytest_cathouse_harness.options import (
    ENV_ISOLATED,
    add_options,
    project_configures_harness,
    read_settings,
)
from pytest_cathouse_harness.scrub import scrub_report
from pytest_cathouse_harness.shadowing import hand_to_controller, shadowed_lines, take_from_worker
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
    '(docs/fixtures.md, "Fixtures").'
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


def _worker_id(workerinput: dict[str, Any] | None) -> str:
    return workerinput["workerid"] if workerinput else "main"


def _run_id(config: pytest.Config, workerinput: dict[str, Any] | None, options: Any) -> str:
    """One id for the whole run: the controller picks it and xdist hands it to workers.

    It names directories under the home, so a value that is not one plain name is a
    ConfigError (`CATHOUSE_RUN_ID=..` once meant the home itself).
    """
    if workerinput:
        return check_run_id(str(workerinput["testrunuid"]), key="testrunuid", source="xdist")
    given = getattr(options, "testrunuid", None)
    if given:
        return check_run_id(str(given), key="--testrunuid", source="command line")
    from_env = env.read("CATHOUSE_RUN_ID")
    run_id = check_run_id(from_env, source="environment") if from_env else uuid.uuid4().hex[:12]
    if hasattr(config.option, "testrunuid"):
        config.option.testrunuid = run_id
    return run_id


def _adopt_controller_owner(workerinput: dict[str, Any] | None) -> None:
    """Workers carry their controller's owner token in their branches' annotation, so the
    controller's sweep removes this run's branches and never those of another run that
    was given the same run id."""
    if workerinput and workerinput.get("cathouse_owner"):
        adopt_owner_token(str(workerinput["cathouse_owner"]))


def _configured(config: pytest.Config, options: Any) -> bool:
    """The project configures the harness, or the command line does."""
    return project_configures_harness(config.rootpath) or any(
        getattr(options, name, None) is not None
        for name in ("cathouse_backend", "cathouse_parent", "cathouse_ttl", "cathouse_project")
    )


def _new_state(
    config: pytest.Config, workerinput: dict[str, Any] | None, options: Any, configured: bool
) -> HarnessState:
    """The run's state: settings (a bad one is a usage error when the project configures
    the harness, else it keeps the plugin idle), run id, this process's part in xdist."""
    settings: Settings | None = None
    error: ConfigError | None = None
    run_id = uuid.uuid4().hex[:12]  # stands in while a bad setting keeps the plugin idle
    try:
        settings = read_settings(config, options)
        run_id = _run_id(config, workerinput, options)
        _adopt_controller_owner(workerinput)
    except ConfigError as exc:
        if configured:
            raise pytest.UsageError(f"cathouse-harness: {exc}") from None
        settings, error = None, exc
    return HarnessState(
        settings=settings,
        settings_error=error,
        run_id=run_id,
        worker=_worker_id(workerinput),
        is_controller=workerinput is None,
        prepared=bool((workerinput or {}).get("cathouse_broker")),
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Any:
    """A project that maps its own variables gets its branch here, before its conftests
    (and the settings they import) are read (`pytest_cathouse_harness.early`)."""
    from pytest_cathouse_harness import early

    options = early_config.known_args_namespace
    try:
        if options.help or options.version:
            pass
        elif early.maps_env(early_config.rootpath):
            workerinput = early.early_workerinput()
            state = _new_state(early_config, workerinput, options, configured=True)
            early_config.stash[state_key] = state
            if workerinput is None:
                from pytest_cathouse_harness.progress import live_line

                state.progress = live_line(early_config, early=True)  # pytest_configure's too
            controller = workerinput is None and early.will_distribute(options)
            early.branch_before_conftests(state, PLACEHOLDER_URL, controller=controller)
        elif _configured(early_config, options):
            if early_config.getini("cathouse_harness_isolate_env"):
                # no branch until a test asks, but what the conftests read at import must
                # not be the shell's database either
                early_config.stash[early.hidden_key] = early.hide(ENV_ISOLATED, PLACEHOLDER_URL)
            # an xdist controller too: it runs no test, but imports the conftests (its
            # broker's own connections are let through, `db.guard.harness_connections`)
            guard_before_branch(early_config, options)
        return (yield)
    except KeyboardInterrupt:
        if early_config.stash.get(state_key, None) is None:
            raise  # no branch was made before the conftests: pytest's own interruption
        _interrupted_before_configure(early_config)
    except Exception:
        replaced = early.failed_import(early_config.stash.get(state_key, None))
        if replaced is not None:
            raise replaced from None
        raise


def _interrupted_before_configure(config: pytest.Config) -> NoReturn:
    """Ctrl-C before pytest is configured (the branch being made, the conftests being
    imported): pytest would print the interrupt's whole traceback and run none of the
    hooks that end a session. End it here, say so in one line, exit as interrupted."""
    state = config.stash[state_key]
    if state.session is not None:
        with contextlib.suppress(Exception):
            state.session.finish()
    from pytest_cathouse_harness.progress import exit_quickly

    exit_quickly(config)
    pytest_unconfigure(config)
    sys.stderr.write("cathouse-harness: interrupted before the tests began; "
                     "the run's branches are deleted\n")
    raise SystemExit(int(pytest.ExitCode.INTERRUPTED))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput["cathouse_owner"] = owner_token()
    state = node.config.stash.get(state_key, None)
    if state is None or state.settings is None:
        return
    if state.broker is None:
        # started with the first worker, idle until one asks for its branch
        from cathouse_harness.xdist.broker import BranchBroker

        state.broker = BranchBroker(state.settings, state.run_id, progress=state.progress)
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
    configured = _configured(config, config.option)
    adopt_asyncio_defaults(config, configured=configured)
    workerinput = getattr(config, "workerinput", None)
    state = config.stash.get(state_key, None)
    if state is None:
        state = _new_state(config, workerinput, config.option, configured)
        config.stash[state_key] = state
        from pytest_cathouse_harness.early import hidden_key

        for name, value in config.stash.get(hidden_key, {}).items():
            state.saved_env.setdefault(name, value)  # what they held before the conftests
    elif hasattr(config.option, "testrunuid") and workerinput is None:
        config.option.testrunuid = state.run_id  # made before the conftests: xdist's too
    adopt_early_guard(config, state)
    from pytest_cathouse_harness.early import OWNER_VARIABLE, WORKER_PID_VARIABLE, owner_value, set_variables

    if configured:
        from pytest_cathouse_harness.progress import QuickInterrupt, live_line

        config.pluginmanager.register(QuickInterrupt(config), "cathouse_harness_interrupt")
        if state.progress is None:
            state.progress = live_line(config)
    if state.settings is not None and state.is_controller:
        # xdist's workers start after this; they need it before their conftests load
        set_variables(state, {OWNER_VARIABLE: owner_value(state.run_id, owner_token())})
    # a worker's, for the processes its tests start; none for this process's own workers
    set_variables(state, {WORKER_PID_VARIABLE: str(os.getpid()) if workerinput is not None else ""})
    if configured and config.getini("cathouse_harness_isolate_env"):
        for name in ENV_ISOLATED:
            if state.session is not None:
                break  # they name the branch made before the conftests
            state.saved_env.setdefault(name, os.environ.get(name))
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
    if state is not None and project_configures_harness(session.config.rootpath):
        hand_to_controller(session.config, _after_collection(session.config, session.items))
    if state is None or not state.prepared or state.settings is None or state.session is not None:
        return
    if session.config.option.collectonly or not any(_uses_branch(i) for i in session.items):
        return
    from cathouse_harness.xdist.handoff import expect_branch, handoff_dir

    try:
        expect_branch(handoff_dir(state.settings, state.run_id), state.worker)
    except (OSError, HarnessError):
        pass  # the first test asks again, and reports what is wrong


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        join_marker_fixtures(item)
    state = config.stash.get(state_key, None)
    if state is not None and state.mapped:
        from pytest_cathouse_harness.early import restore_removed

        state.restored = restore_removed(state)


def _uses_branch(item: pytest.Item) -> bool:
    if item.get_closest_marker("skip") is not None:
        return False
    names = getattr(item, "fixturenames", ())
    return _BRANCH_FIXTURE in names or any(item.get_closest_marker(m) for m in _BRANCH_MARKERS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The branch made before the conftests failed: the first test reports why, and ends
    the run, as a fixture's failed setup does."""
    state = item.config.stash.get(state_key, None)
    if state is not None and state.early_error is not None:
        stop_for_setup_error(item.config, item.session, state, state.early_error)


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
    from pytest_cathouse_harness.early import hidden_key

    state = config.stash.get(state_key, None)
    saved = state.saved_env if state is not None else config.stash.get(hidden_key, {})
    if state is not None:
        _close_broker(state)  # when the session never finished (an internal error)
        unguard(state)  # likewise: this process's drivers go back as they were
        if state.progress is not None:
            state.progress.close()
    for name, value in saved.items():
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
    return _after_collection(config, items)


def _after_collection(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """What is said once collection has ended: names of the branch's variables the
    project had removed, and fixtures of ours it shadows."""
    state = config.stash.get(state_key, None)
    restored = []
    if state is not None and state.restored:
        from pytest_cathouse_harness.early import restored_line

        restored.append(restored_line(state.restored))
    return restored + shadowed_lines(items, config.rootpath)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(state_key, None)
    if state is None:
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED and _configured(config, config.option):
        from pytest_cathouse_harness.progress import exit_quickly

        exit_quickly(config)  # a worker's too: the controller waits for it
    if state.session is not None and state.settings is not None:
        # a branch made before the conftests that no fixture asked for (and so tore down)
        with contextlib.suppress(HarnessError):  # the summary names a failed delete
            finish_session(state, state.settings, failed=session.testsfailed > 0)
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
    take_from_worker(output, state.shadowed)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is None:
        return
    for line in state.shadowed:
        terminalreporter.write_line(line)
    reports = _reports(state)
    if not reports and not state.swept:
        if _silently_green(config, state) and exitstatus != pytest.ExitCode.INTERRUPTED:
            terminalreporter.write_line(report.NO_BRANCH_LINE)
        return
    show_secrets = bool(config.getoption("cathouse_show_secrets"))
    kept_urls = getattr(state.session, "kept_urls", None) if state.session else None
    for line in report.summary_lines(reports, state.run_id, state.swept, kept_urls, show_secrets):
        terminalreporter.write_line(line)
    failures = (
        getattr(r, "longreprtext", "")
        for kind in ("failed", "error")
        for r in terminalreporter.stats.get(kind, [])
    )
    hint = report.pooler_hint(reports, failures)
    if hint is not None:
        terminalreporter.write_line(hint)
    if state.settings is not None and not state.settings.migrates_or_seeds:
        # with a mapping and no service the app migrates itself (Flask-Migrate's
        # upgrade() in create_app): init has nothing more to propose, so say what happens
        hint = (f"its schema is what the tests create through {', '.join(state.settings.env.names)}"
                if state.settings.env else INIT_HINT)
        terminalreporter.write_line(f"  no service has migrations, so the branch starts empty: {hint}")


def _silently_green(config: pytest.Config, state: HarnessState) -> bool:
    """A run of a project that configures the harness in which no test had a branch:
    whatever its tests read from the environment named no database of ours."""
    return (
        state.is_controller and state.settings is not None and state.early_error is None
        and state.setup_exit is None and not config.option.collectonly
        and project_configures_harness(config.rootpath)
    )
