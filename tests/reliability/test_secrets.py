"""Secrets never leak, the local server is loopback-only and keyed, and nothing mutates a
branch the harness did not create.

The interesting paths run with a known API key (written as the local server's key and
handed to the harness as NEON_API_KEY, so the real Neon code path carries it) and the
project's role password; every byte they print, log or write for a person is scanned.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cathouse_harness.branching.lifecycle import MARK, MARK_KIND, MARK_RUN
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.server import check_loopback, ensure_local_server

from tests.reliability._cases import TEST_FILE
from tests.reliability._support import LocalNeon, make_project, plugin_env

KNOWN_KEY = "napi_reliability_" + secrets.token_hex(20)
CLI_WITH_DEBUG_LOGS = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
    "from cathouse_harness.cli.commands import main; sys.exit(main())"
)


@pytest.fixture(scope="module")
def keyed_home(neon_home: Path) -> Path:
    (neon_home / "local-api-key").write_text(KNOWN_KEY + "\n")
    os.chmod(neon_home / "local-api-key", 0o600)
    return neon_home


@pytest.fixture(scope="module")
def api(keyed_home: Path, neon: LocalNeon) -> LocalNeon:
    assert neon.key == KNOWN_KEY
    return neon


@pytest.fixture(scope="module")
def role_password(api: LocalNeon) -> str:
    main = api.default_branch()["id"]
    data = api._get(f"/projects/{api.project}/branches/{main}/roles/cathouse_owner/reveal_password")
    return str(data["password"])


@pytest.fixture(scope="module")
def foreign(api: LocalNeon) -> dict[str, str]:
    """Branches the harness must refuse: default, protected (with marks), unmarked."""
    made = {
        "protected": api.create_branch(
            "harness/dev/protected", protected=True,
            annotation={MARK: "1", MARK_RUN: "dev", MARK_KIND: "dev"},
        ),
        "unmarked": api.create_branch("harness/dev/unmarked"),
        "foreign": api.create_branch("feature/someone-else"),
    }
    names = {k: str(v["name"]) for k, v in made.items()}
    names["default"] = str(api.default_branch()["name"])
    return names


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("secrets") / "project", {"test_app.py": TEST_FILE})


def neon_env(api: LocalNeon, home: Path, run_id: str = "sec") -> dict[str, str]:
    """The Neon backend, pointed at the local server: the key travels as NEON_API_KEY."""
    return plugin_env(
        home, run_id,
        NEON_API_KEY=KNOWN_KEY, NEON_API_HOST=api.info.api_host, NEON_PROJECT_ID=api.project,
    )


def cli(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI_WITH_DEBUG_LOGS, *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def captured(api: LocalNeon, keyed_home: Path, project: Path, foreign: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every output of the interesting paths, by where it came from."""
    out: dict[str, str] = {}
    files = tmp_path_factory.mktemp("outputs")
    env = neon_env(api, keyed_home)
    junit, logfile = files / "junit.xml", files / "plugin.log"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-rA",
         "--cathouse-keep-branch", "on-failure", f"--junitxml={junit}", "-o", "log_cli=true",
         "--log-cli-level=DEBUG", "--log-level=DEBUG", f"--log-file={logfile}",
         "--log-file-level=DEBUG"],
        cwd=project, env={**env, "RELIABILITY_FAIL": "1"}, capture_output=True, text=True, timeout=180,
    )
    out["plugin stdout"], out["plugin stderr"] = run.stdout, run.stderr
    out["plugin exit"] = str(run.returncode)
    out["junit xml"] = junit.read_text()
    out["plugin log file"] = logfile.read_text()
    commands = [
        ("up", "--json"), ("list", "--json"), ("doctor", "--json"), ("migrate", "--json"),
        ("reset", "--json"), ("diff", "--json"), ("rehearse", "--json"),
        ("gc", "--dry-run", "--json"), ("gc", "--run", "sec", "--json"),
        ("down", "--json"),
        # errors: exception text must be as clean as success
        ("down", foreign["default"]), ("reset", foreign["unmarked"]), ("down", "harness/nope"),
        ("up", "--parent", "no-such-parent"),
    ]
    for args in commands:
        result = cli(project, env, *args)
        out[f"cli {' '.join(args)} stdout"] = result.stdout
        out[f"cli {' '.join(args)} stderr"] = result.stderr
        out[f"cli {' '.join(args)} exit"] = str(result.returncode)
    for path in sorted((keyed_home / "logs").glob("*.log")) + sorted(keyed_home.glob("*.log")):
        out[f"log {path.name}"] = path.read_text(errors="replace")
    yield out


def _hits(text: str, needles: list[str]) -> list[str]:
    """Where each secret shows up, as the 100 characters before it (the secret masked)."""
    found = []
    for needle in needles:
        at = text.find(needle) if needle else -1
        if at >= 0:
            found.append(text[max(0, at - 100):at] + "<SECRET>")
    return found


def test_no_secret_in_any_output(captured: dict[str, str], role_password: str) -> None:
    needles = [KNOWN_KEY, role_password, quote(role_password, safe="")]
    hits = {where: _hits(text, needles) for where, text in captured.items()}
    assert {k: v for k, v in hits.items() if v} == {}
    # the scan saw the paths it is meant to see, so 0 hits means something
    assert captured["plugin exit"] == "1", captured["plugin stdout"][-3000:]
    assert "kept for inspection" in captured["plugin stdout"]
    assert "DEBUG" in captured["plugin log file"] and "failing on purpose" in captured["junit xml"]
    assert captured["cli up --json exit"] == "0", captured["cli up --json stderr"]
    assert json.loads(captured["cli up --json stdout"])["database_url"].count(":***@") == 1
    # the rehearsal (a fork of the default branch, migrated) and the dev branch's diff (its
    # migrated schema against the empty parent) ran
    assert captured["cli rehearse --json exit"] == "0", captured["cli rehearse --json stderr"]
    assert "CREATE TABLE" in json.loads(captured["cli diff --json stdout"])["diff"]
    assert "DEBUG" in captured["cli list --json stderr"]
    assert any(k.startswith("log ") for k in captured)


REFUSALS = [
    (command, which)
    for command in ("down", "reset")
    for which in ("default", "protected", "unmarked", "foreign")
] + [
    # `up --name X` outside harness/ makes harness/dev/X, so only these names reach a branch
    ("up", "protected"),
    ("up", "unmarked"),
]


@pytest.mark.parametrize(("command", "which"), REFUSALS)
def test_cli_refuses_branches_it_did_not_create(
    api: LocalNeon, keyed_home: Path, project: Path, foreign: dict[str, str], which: str, command: str
) -> None:
    before = {b["id"]: b for b in api.branches()}
    args = (command, "--name", foreign[which]) if command == "up" else (command, foreign[which])
    result = cli(project, neon_env(api, keyed_home), *args, "--quiet")
    errors = [line for line in result.stderr.splitlines() if line.startswith("cathouse-branch:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "refus" in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    after = {b["id"]: b for b in api.branches()}
    assert set(before) <= set(after)
    for branch_id, branch in before.items():
        assert after[branch_id]["updated_at"] == branch["updated_at"], branch["name"]
    assert not [b for b in after if b not in before], "a branch was created"


def test_plugin_refuses_an_unmarked_branch_in_its_way(
    api: LocalNeon, keyed_home: Path, project: Path
) -> None:
    """A branch without the marks that carries the session's name stops the run; it is
    neither reused nor deleted."""
    squatter = api.create_branch("harness/squat/main")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=project, env=neon_env(api, keyed_home, run_id="squat"), capture_output=True, text=True,
        timeout=120,
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text
    still = [b for b in api.branches() if b["id"] == squatter["id"]]
    assert still and still[0]["updated_at"] == squatter["updated_at"]


def test_env_file_is_private(api: LocalNeon, keyed_home: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {})
    env = neon_env(api, keyed_home)
    result = cli(project, env, "up", "--name", "harness/dev/private-env", "--quiet")
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE((project / ".env").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert cli(project, env, "down", "--quiet").returncode == 0


def test_server_answers_only_with_its_key(api: LocalNeon) -> None:
    base = api.info.api_host
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KNOWN_KEY}"},
                    {"Authorization": f"Bearer {KNOWN_KEY}x"}):
        for path in ("/projects", f"/projects/{api.project}/branches", "/_local/faults", "/_local/info"):
            answer = httpx.get(base + path, headers=headers, timeout=10)
            assert answer.status_code == 401, (path, headers.keys(), answer.status_code)
            assert KNOWN_KEY not in answer.text
    answer = httpx.get(base + "/projects", headers={"Authorization": f"Bearer {KNOWN_KEY}"}, timeout=10)
    assert answer.status_code == 200


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_server_and_endpoints_listen_on_loopback_only(api: LocalNeon, keyed_home: Path) -> None:
    info = ensure_local_server(keyed_home)
    assert httpx.URL(info.api_host).host == "127.0.0.1"
    url = httpx.URL(api.direct_url(api.default_branch()["id"]).replace("postgresql://", "http://"))
    # 127.0.0.1 or the endpoint's own address in 127.0.0.0/8 (on 5432)
    assert ipaddress.ip_address(url.host).is_loopback, url.host
    for bad in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(LocalServerError):
            check_loopback(bad)
    outside = _non_loopback_address()
    if outside is not None:  # a machine with a network interface: the port must be closed there
        for port in (info.port, url.port or 5432):
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
