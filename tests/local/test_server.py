"""The local server as a process: shared daemon, one server under concurrent starts, idle
exit, `stop_local_server`, the `emulator` output, loopback only, no secrets in logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import ConfigError, LocalServerError
from cathouse_harness.local.compute.layout import memory_bases
from cathouse_harness.local.discovery import LocalServerInfo, discovery_path, log_path, probe, running_server
from cathouse_harness.local.launch import ensure_local_server, stop_local_server
from cathouse_harness.local.server import bind_socket
from cathouse_harness.neon.backend import connect_backend

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, now reaped
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_dead(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


def _get(info: LocalServerInfo, path: str) -> dict[str, object]:
    request = urllib.request.Request(
        info.api_host + path, headers={"Authorization": f"Bearer {info.api_key.reveal()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.loads(answer.read()))


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    yield path
    stop_local_server(path)
    # only this home's clusters: other processes' live clusters share the parent directory
    for leftover in memory_bases(path):
        shutil.rmtree(leftover, ignore_errors=True)


def test_daemon_is_shared_and_stops(home: Path) -> None:
    # Two processes starting at once get one server.
    code = (
        "import sys; from pathlib import Path; from cathouse_harness.local.launch import "
        "ensure_local_server as e; print(e(Path(sys.argv[1])).pid)"
    )
    starters = [
        subprocess.Popen([sys.executable, "-c", code, str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    pids = {int(p.communicate(timeout=120)[0].strip()) for p in starters}
    assert len(pids) == 1
    info = ensure_local_server(home)
    assert {info.pid} == pids and info.pid != os.getpid()
    assert info.api_key.reveal() not in repr(info)
    assert _get(info, "/auth")
    assert discovery_path(home).stat().st_mode & 0o777 == 0o600
    assert info.api_key.reveal() not in discovery_path(home).read_text()
    assert running_server(home) == info
    # discovery trusts a server only when it answers with this home's key
    answer = probe(info.api_host, info.api_key.reveal())
    assert answer is not None and answer["pid"] == info.pid
    assert probe(info.api_host, "not-the-key") is None

    branches = _get(info, f"/projects/{info.project_id}/branches")
    assert branches["branches"]
    log_text = log_path(home).read_text()
    assert info.api_key.reveal() not in log_text

    # in /dev/shm (or $XDG_RUNTIME_DIR) while it runs: the cluster, or the home's instances
    assert memory_bases(home)
    assert stop_local_server(home) is True
    _wait_dead(info.pid)
    assert not discovery_path(home).exists()
    assert not memory_bases(home), "a stopped server left its in-memory cluster"
    assert running_server(home) is None
    assert probe(info.api_host, info.api_key.reveal()) is None  # nothing listens now
    assert stop_local_server(home) is False


def test_daemon_exits_when_idle(home: Path) -> None:
    info = ensure_local_server(home, idle_timeout=0.5)
    _wait_dead(info.pid)
    assert not discovery_path(home).exists()
    # A stale discovery file (dead pid) is ignored and replaced by a new server.
    discovery_path(home).write_text(
        json.dumps({"pid": info.pid, "api_host": info.api_host, "port": info.port, "project_id": "x"})
    )
    again = ensure_local_server(home)
    assert again.pid != info.pid and again.project_id == info.project_id


def test_the_first_client_names_the_project_and_a_later_one_is_told(home: Path, tmp_path: Path) -> None:
    """The harness's configured database and role reach the daemon that makes the
    home's project; a later client configuring names the project lacks gets one line."""
    shop = Settings(project_root=tmp_path, home=home, database="shop", role="shop_owner")
    backend = connect_backend(shop)
    headers = {"Authorization": f"Bearer {backend.api_key.reveal()}"}
    with httpx.Client(base_url=backend.api_host, headers=headers, timeout=30) as client:
        branches = client.get(f"/projects/{backend.project_id}/branches").json()["branches"]
        [main] = [b["id"] for b in branches if b["default"]]
        listed = client.get(f"/projects/{backend.project_id}/branches/{main}/databases").json()
    assert [(d["name"], d["owner_name"]) for d in listed["databases"]] == [("shop", "shop_owner")]
    assert connect_backend(shop).project_id == backend.project_id

    other = Settings(
        project_root=tmp_path, home=home, database="cathouse", role="shop_owner",
        sources={"database": "env CATHOUSE_DATABASE"},
    )
    with pytest.raises(ConfigError) as refused:
        connect_backend(other)
    message = str(refused.value)
    assert message.startswith("database (from env CATHOUSE_DATABASE): 'cathouse' is not in")
    assert "(its databases: shop)" in message and "\n" not in message
    assert "CATHOUSE_HARNESS_HOME" in (refused.value.hint or "")


def test_emulator_prints_shell_lines_and_stops_on_ctrl_c(home: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from cathouse_harness.local.server import "
        "run_emulator; sys.exit(run_emulator(0, Path(sys.argv[1]), 'memory', sys.stdout))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(home)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().rstrip("\n") for _ in range(3)]
        keys = [line.partition("=")[0] for line in lines]
        assert keys == ["NEON_API_HOST", "NEON_API_KEY", "NEON_PROJECT_ID"]
        env = dict(line.split("=", 1) for line in lines)
        assert env["NEON_API_HOST"].startswith("http://127.0.0.1:")
        assert env["NEON_API_HOST"].endswith("/api/v2")
        request = urllib.request.Request(
            env["NEON_API_HOST"] + "/projects", headers={"Authorization": f"Bearer {env['NEON_API_KEY']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            projects = json.loads(answer.read())["projects"]
        assert [p["id"] for p in projects] == [env["NEON_PROJECT_ID"]]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert env["NEON_API_KEY"] not in err


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(LocalServerError):
        bind_socket("0.0.0.0", 0)


def test_a_daemon_that_exits_while_starting_is_one_error_with_its_log(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cathouse_harness.local.launch as launch

    monkeypatch.setattr(
        launch, "_daemon_command",
        lambda *args: [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"],
    )
    with pytest.raises(LocalServerError) as caught:
        ensure_local_server(home)
    assert "exited with code 3 while starting" in caught.value.message
    assert "cannot bind" in str(caught.value)  # the log's tail, as the hint


def test_a_daemon_that_never_answers_is_stopped_and_named(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cathouse_harness.local.launch as launch

    pid_file = home / "silent.pid"
    monkeypatch.setattr(
        launch, "_daemon_command",
        lambda *args: [sys.executable, "-c",
                       f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                       "time.sleep(60)"],
    )
    monkeypatch.setattr(launch, "START_TIMEOUT", 2.0)
    with pytest.raises(LocalServerError, match="did not answer within"):
        ensure_local_server(home)
    _wait_dead(int(pid_file.read_text()))
