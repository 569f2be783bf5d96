"""Bad configurations and arguments: each is refused with one line that names the
problem and where it came from, exit code 2 from the CLI (a usage error from the plugin),
no traceback, no secret, and no branch created."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability._cases import TEST_FILE
from tests.reliability._support import LocalNeon, make_project, plugin_env

SECRET_KEY = "napi_badinput_" + "k" * 40
TRACEBACK = re.compile(r"Traceback|^\s+File \"", re.M)


@dataclass(frozen=True)
class Bad:
    """One bad input: how to plant it, and words the error line must contain."""

    id: str
    plant: Callable[[Path, dict[str, str]], list[str]]  # returns extra CLI arguments
    expect: tuple[str, ...]
    plugin: bool = True  # also run the plugin on it
    cli_command: tuple[str, ...] = ("up",)
    env: dict[str, str] = field(default_factory=dict)
    plugin_expect: tuple[str, ...] | None = None  # when pytest words it itself


def _edit(project: Path, old: str, new: str, count: int = 1) -> None:
    path = project / "pyproject.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _set_env(**values: str) -> Callable[[Path, dict[str, str]], list[str]]:
    def plant(_project: Path, env: dict[str, str]) -> list[str]:
        env.update(values)
        return []

    return plant


def _toml(old: str, new: str) -> Callable[[Path, dict[str, str]], list[str]]:
    def plant(project: Path, _env: dict[str, str]) -> list[str]:
        _edit(project, old, new)
        return []

    return plant


def _args(*args: str) -> Callable[[Path, dict[str, str]], list[str]]:
    return lambda _project, _env: list(args)


def _neon(**values: str) -> Callable[[Path, dict[str, str]], list[str]]:
    """The Neon backend pointed at the local server (filled in by the test)."""

    def plant(_project: Path, env: dict[str, str]) -> list[str]:
        env.update({"NEON_API_KEY": "<key>", "NEON_API_HOST": "<host>", "NEON_PROJECT_ID": "<project>"})
        env.update(values)
        return []

    return plant


def _unreadable_env(project: Path, _env: dict[str, str]) -> list[str]:
    (project / ".env").mkdir()  # root reads any file; a directory cannot be read as one
    return []


def _undecodable_env(project: Path, _env: dict[str, str]) -> list[str]:
    (project / ".env").write_bytes(b"NEON_PROJECT_ID=\xff\xfe\n")
    return []


SERVICES = '[[tool.cathouse_harness.services]]\nname = "auth-service"'

CASES = [
    Bad("unknown service setting", _toml('pool_size = 2\n', 'pool_size = 2\ncolour = "red"\n'),
        ("unknown key 'colour'", "services[", "pyproject.toml")),
    Bad("duplicate service", _toml('name = "catalog-service"', 'name = "auth-service"'),
        ("listed twice", "pyproject.toml")),
    Bad("duplicate schema", _toml('schema = "catalog"', 'schema = "auth"'),
        ("schema 'auth' is already owned by auth-service", "pyproject.toml")),
    Bad("schema not an identifier", _toml('schema = "auth"', 'schema = "auth; drop"'),
        ("not a plain SQL identifier", "pyproject.toml")),
    Bad("pool budget over the limit", _toml("connection_limit = 10", "connection_limit = 8"),
        ("connection_limit is 8", "pyproject.toml")),
    Bad("missing alembic.ini", _toml('"auth-service/alembic.ini"', '"auth-service/nope.ini"'),
        ("nope.ini' does not exist", "pyproject.toml")),
    Bad("read-only service with migrations",
        _toml('name = "proxy-service"\n',
              'name = "proxy-service"\nalembic_ini = "auth-service/alembic.ini"\n'),
        ("read_only service has no migrations", "pyproject.toml")),
    Bad("invalid TOML", _toml("connection_limit = 10", "connection_limit = = 10"),
        ("is not valid TOML", "pyproject.toml"), plugin_expect=("pyproject.toml", "Invalid value")),
    Bad("unknown top-level key", _toml("schema_only = false", "schema_only = false\nbranch_tll = '1h'"),
        ("unknown key 'branch_tll'", "pyproject.toml")),
    Bad("bad TTL in the environment", _set_env(CATHOUSE_BRANCH_TTL="forever"),
        ("branch_ttl", "CATHOUSE_BRANCH_TTL", "not a duration")),
    Bad("TTL over 30 days", _toml('branch_ttl = "15m"', 'branch_ttl = "31d"'),
        ("branch_ttl", "at most 30 days", "pyproject.toml")),
    Bad("bad TTL argument", _args("--ttl", "0s"), ("--ttl", "command line", "longer than zero"),
        plugin=False),
    Bad("bad connection_limit", _set_env(CATHOUSE_CONNECTION_LIMIT="ten"),
        ("connection_limit", "CATHOUSE_CONNECTION_LIMIT", "not a whole number")),
    Bad("unknown backend", _set_env(CATHOUSE_BACKEND="cloud"),
        ("backend", "CATHOUSE_BACKEND", "'cloud'")),
    Bad("malformed API URL", _neon(NEON_API_HOST="console.neon.tech/api/v2"),
        ("NEON_API_HOST", "not an http(s) URL")),
    Bad("malformed migration URL", _args("--url", "postgresql://u:pw@[bad/db"),
        ("--url",), plugin=False, cli_command=("migrate",)),
    Bad("neon backend without a project", _neon(NEON_PROJECT_ID=""),
        ("NEON_PROJECT_ID", "needs a project id")),
    Bad("empty API key", _set_env(NEON_API_KEY="  ", CATHOUSE_BACKEND="neon"),
        ("NEON_API_KEY", "empty")),
    Bad("unreadable .env", _unreadable_env, (".env", "cannot be read")),
    Bad("undecodable .env", _undecodable_env, (".env", "cannot be read")),
    Bad("unknown parent branch", _set_env(CATHOUSE_PARENT_BRANCH="no-such-parent"),
        ("no-such-parent", "CATHOUSE_PARENT_BRANCH")),
    Bad("wrong project id", _neon(NEON_PROJECT_ID="wrong-project-123"),
        ("wrong-project-123", "NEON_PROJECT_ID")),
    Bad("invalid API key", _neon(NEON_API_KEY=SECRET_KEY), ("NEON_API_KEY",)),
    Bad("unknown CLI option", _args("--colour"), ("unrecognized arguments: --colour",), plugin=False),
    Bad("keep-branch value", _set_env(CATHOUSE_KEEP_BRANCH="sometimes"),
        ("keep_branch", "CATHOUSE_KEEP_BRANCH", "'sometimes'")),
]


@pytest.fixture(scope="module")
def api(neon: LocalNeon) -> LocalNeon:
    return neon


def _plant(case: Bad, api: LocalNeon, tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    project = make_project(tmp_path / "project", {"test_app.py": TEST_FILE})
    env = plugin_env(api.home, "bad", **case.env)
    args = case.plant(project, env)
    real = {"<key>": api.key, "<host>": api.info.api_host, "<project>": api.project}
    for name, value in list(env.items()):
        env[name] = real.get(value, value)
    return project, env, args


def _check_one_line(
    text: str, lines: list[str], expect: tuple[str, ...], secrets: list[str]
) -> None:
    assert len(lines) == 1, f"expected one error line, got {lines}:\n{text}"
    for word in expect:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"
    assert not TRACEBACK.search(text), text
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_rejects(case: Bad, api: LocalNeon, tmp_path: Path) -> None:
    before = {b["id"] for b in api.branches()}
    project, env, args = _plant(case, api, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", *case.cli_command, *args, "--quiet"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    text = result.stdout + result.stderr
    errors = [line for line in text.splitlines() if line.strip()]
    assert result.returncode == 2, text
    _check_one_line(text, errors, case.expect, [api.key, SECRET_KEY])
    assert {b["id"] for b in api.branches()} == before, "a branch was created"
    assert not (project / ".env").is_file() or case.plant is _undecodable_env


@pytest.mark.parametrize("case", [c for c in CASES if c.plugin], ids=[c.id for c in CASES if c.plugin])
def test_plugin_rejects(case: Bad, api: LocalNeon, tmp_path: Path) -> None:
    before = {b["id"] for b in api.branches()}
    project, env, _ = _plant(case, api, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    text = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, text
    errors = [
        line for line in text.splitlines()
        if line.startswith("ERROR:") or "_pytest.outcomes.Exit" in line or "cathouse-harness:" in line
    ]
    _check_one_line(text, errors, case.plugin_expect or case.expect, [api.key, SECRET_KEY])
    assert {b["id"] for b in api.branches()} == before, "a branch was created"
    if os.environ.get("RELIABILITY_SHOW"):
        print(case.id, "->", errors[0])


def _services_reordered(project: Path) -> None:
    """installation-service first: its foreign keys point at schemas not made yet."""
    path = project / "pyproject.toml"
    text = path.read_text()
    marker = "[[tool.cathouse_harness.services]]"
    first = text.index(marker)
    third = text.index(marker, text.index(marker, first + 1) + 1)
    tail = text.index("# Reads every")
    path.write_text(text[:first] + text[third:tail] + text[first:third] + text[tail:])


def test_order_that_breaks_a_foreign_key(api: LocalNeon, tmp_path: Path) -> None:
    """Found only when the migration runs, but it is a configuration fix: exit 2 from the
    CLI and a usage error from the plugin, one line that says how to fix the order, and
    nothing is left behind."""
    from cathouse_harness.errors import MigrationOrderError

    before = {b["id"] for b in api.branches()}
    project = make_project(tmp_path / "project", {"test_app.py": TEST_FILE})
    _services_reordered(project)
    env = plugin_env(api.home, "order")
    cli = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "up", "--quiet"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    plugin = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == MigrationOrderError.exit_code == 2, cli.stderr
    lines = [line for line in (cli.stdout + cli.stderr).splitlines() if line.strip()]
    _check_one_line(cli.stderr, lines, ("installation-service", "put auth-service before"), [api.key])
    assert plugin.returncode == pytest.ExitCode.USAGE_ERROR, plugin.stdout
    text = plugin.stdout + plugin.stderr
    lines = [line for line in text.splitlines() if "_pytest.outcomes.Exit" in line]
    _check_one_line(text, lines, ("installation-service", "put auth-service before"), [api.key])
    assert {b["id"] for b in api.branches()} == before, "a branch was left behind"
