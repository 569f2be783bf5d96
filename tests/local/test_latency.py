"""The latency profile (`CATHOUSE_LOCAL_LATENCY`): its spec, that the server really waits,
and that without it nothing waits. Timings are asserted with lower bounds only: a slow
machine makes things slower, never faster, so no assert here can flake on one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.local.sim import latency as latency_module
from cathouse_harness.local.sim.latency import ENV_VAR, NO_LATENCY, PRESETS, LatencyProfile, parse_latency

from tests.local._server import api_client, create_branch, start_test_server, wait_operations

RTT = 0.2
CREATE = 0.5
START = 0.3
SLACK = 0.9  # timers may fire a hair early relative to our clock; never late is not promised


# ---------------------------------------------------------------------- the spec


def test_preset_explicit_and_override() -> None:
    assert parse_latency("neon") == PRESETS["neon"]
    assert parse_latency(" NEON ") == PRESETS["neon"]
    assert parse_latency("rtt=0.05,create_branch=0.8,start_compute=0.5") == LatencyProfile(
        rtt=0.05, create_branch=0.8, start_compute=0.5
    )
    tuned = parse_latency("neon,rtt=0.02")
    assert tuned.rtt == 0.02
    assert tuned.create_branch == PRESETS["neon"].create_branch
    assert parse_latency(tuned.to_spec()) == tuned


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("rtt=-1", "rtt must be a finite number >= 0"),
        ("rtt=fast", "rtt must be a number"),
        ("create_branch=inf", "create_branch must be a finite number"),
        ("warp=1", "unknown key 'warp'"),
        ("aws", "unknown preset 'aws'"),
        ("neon,rtt", "expected key=value"),
    ],
)
def test_bad_values_are_one_line_config_errors(spec: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_latency(spec)
    text = str(caught.value)
    assert ENV_VAR in text and words in text
    assert "\n" not in text


def test_bad_value_from_the_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, ENV_VAR: "rtt=-1", "CATHOUSE_HARNESS_HOME": str(tmp_path / "home")}
    env.pop("NEON_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "emulator", "--home", str(tmp_path / "home")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(ENV_VAR in line and "rtt" in line for line in lines), done.stderr
    assert "Traceback" not in done.stderr


def test_unset_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_latency(None) == NO_LATENCY == parse_latency("")
    assert not NO_LATENCY.active

    async def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s without a latency profile")

    monkeypatch.setattr(latency_module.asyncio, "sleep", no_sleep)
    asyncio.run(NO_LATENCY.operation(["create_branch", "start_compute", "delete_timeline"]))


# ---------------------------------------------------------------------- real waiting


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServerInfo]:
    spec = f"rtt={RTT},create_branch={CREATE},start_compute={START}"
    with start_test_server(tmp_path_factory.mktemp("latency-home"), latency=spec) as info:
        yield info


def test_a_request_takes_the_round_trip(slow_server: LocalServerInfo) -> None:
    with api_client(slow_server) as client:
        client.get(f"/projects/{slow_server.project_id}")  # connection made
        started = time.perf_counter()
        answer = client.get(f"/projects/{slow_server.project_id}")
        took = time.perf_counter() - started
    assert answer.status_code == 200
    assert took >= RTT * SLACK


def test_operations_stay_running_for_their_duration(slow_server: LocalServerInfo) -> None:
    project = slow_server.project_id
    with api_client(slow_server) as client:
        started = time.perf_counter()
        created = create_branch(client, project, name="latency-probe")
        finals = wait_operations(client, project, created["operations"])
        took = time.perf_counter() - started
    by_action = {op["action"]: op for op in finals}
    assert [op["status"] for op in finals] == ["finished"] * len(finals)
    # measured by the server, from the operation's creation to its end
    assert by_action["create_branch"]["total_duration_ms"] >= CREATE * 1000 * SLACK
    assert by_action["start_compute"]["total_duration_ms"] >= (CREATE + START) * 1000 * SLACK
    # and by the client: one create round trip, then the operations one after another
    assert took >= (RTT + CREATE + START) * SLACK


def test_client_sees_httpx_timeout_shorter_than_rtt(slow_server: LocalServerInfo) -> None:
    # The wait is real: a client that gives up sooner than the round trip gets no answer.
    with pytest.raises(httpx.TimeoutException), httpx.Client(
        base_url=slow_server.api_host,
        headers={"Authorization": f"Bearer {slow_server.api_key.reveal()}"},
        timeout=RTT / 10,
    ) as client:
        client.get(f"/projects/{slow_server.project_id}")


def test_the_journal_times_each_request(slow_server: LocalServerInfo) -> None:
    with api_client(slow_server) as client:
        since = time.time()
        client.get(f"/projects/{slow_server.project_id}")
        entries = client.get("/_local/requests", params={"since": since}).json()["requests"]
    mine = [e for e in entries if e["path"].endswith(slow_server.project_id)]
    assert len(mine) == 1 and mine[0]["status"] == 200
    assert mine[0]["answered"] - mine[0]["received"] >= RTT * SLACK
