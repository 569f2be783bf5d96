"""Fault injection: the spec parser, and every fault kind as a client sees it over HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.local.sim.faults import FaultConfig, FaultInjector, parse_faults

from tests.local._server import api_client, create_ready_branch, start_test_server, wait_operations

# A dropped connection reaches the client as a close without an answer or, when part of
# the request was still unread on the server, as a reset: both are what a real drop does.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServerInfo]:
    with start_test_server(tmp_path_factory.mktemp("faults-home")) as info:
        yield info


@pytest.fixture
def client(server: LocalServerInfo) -> Iterator[httpx.Client]:
    with api_client(server) as c:
        yield c
        c.put("/_local/faults", json={"spec": ""})


def _set(client: httpx.Client, spec: str) -> None:
    answer = client.put("/_local/faults", json={"spec": spec})
    assert answer.status_code == 200, answer.text
    assert answer.json()["faults"]["spec"] == parse_faults(spec).to_spec()


def _names(client: httpx.Client, project: str) -> set[str]:
    return {b["name"] for b in client.get(f"/projects/{project}/branches").json()["branches"]}


def _create_body(name: str) -> dict[str, object]:
    return {"branch": {"name": name}, "endpoints": [{"type": "read_write"}]}


# ---------------------------------------------------------------------- parsing


def test_parse_full_spec_round_trips() -> None:
    spec = (
        "latency=0.05,rate429=0.3,retry_after=2,rate423=0.1,rate5xx=0.1,drop=0.1,"
        "drop_after=0.05,op_delay=2,op_fail=0.2,seed=42,limit=7,methods=POST/delete"
    )
    config = parse_faults(spec)
    assert config == FaultConfig(
        latency=0.05,
        rate429=0.3,
        retry_after=2,
        rate423=0.1,
        rate5xx=0.1,
        drop=0.1,
        drop_after=0.05,
        op_delay=2,
        op_fail=0.2,
        seed=42,
        limit=7,
        methods=frozenset({"POST", "DELETE"}),
    )
    assert parse_faults(config.to_spec()) == config
    assert parse_faults("") == FaultConfig() and not FaultConfig().active


@pytest.mark.parametrize("spec", ["rate429=2", "drop=-0.1", "latency=abc", "bogus=1", "rate429", "seed=x"])
def test_parse_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_faults(spec)
    assert "CATHOUSE_LOCAL_FAULTS" in str(caught.value)


def test_seeded_injector_is_reproducible_and_limited() -> None:
    config = parse_faults("rate429=0.5,seed=7,limit=3")
    first, second = FaultInjector(config), FaultInjector(config)
    draws = [first.before_request("GET") for _ in range(40)]
    assert draws == [second.before_request("GET") for _ in range(40)]
    assert sum(d is not None for d in draws) == 3


# ---------------------------------------------------------------------- over HTTP


def test_429_carries_retry_after_and_creates_nothing(client: httpx.Client, server: LocalServerInfo) -> None:
    project = server.project_id
    _set(client, "rate429=1,retry_after=3,limit=1")
    name = f"rl-{secrets.token_hex(3)}"
    answer = client.post(f"/projects/{project}/branches", json=_create_body(name))
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"
    assert answer.json()["code"] == "TOO_MANY_REQUESTS"
    assert name not in _names(client, project)  # the limit is spent: this call is clean


def test_423_and_5xx(client: httpx.Client, server: LocalServerInfo) -> None:
    _set(client, "rate423=1,limit=1")
    assert client.get("/auth").status_code == 423
    _set(client, "rate5xx=1,limit=4")
    statuses = {client.get("/auth").status_code for _ in range(4)}
    assert statuses <= {500, 503} and statuses
    assert client.get("/auth").status_code == 200


def test_admin_route_is_never_faulted(client: httpx.Client) -> None:
    _set(client, "rate429=1")
    assert client.get("/auth").status_code == 429
    assert client.get("/_local/faults").json()["injected"] == 1
    _set(client, "")
    assert client.get("/auth").status_code == 200


def test_drop_closes_without_answer_and_creates_nothing(
    client: httpx.Client, server: LocalServerInfo
) -> None:
    project = server.project_id
    _set(client, "drop=1,methods=POST,limit=1")
    name = f"drop-{secrets.token_hex(3)}"
    with pytest.raises(DROPPED):
        client.post(f"/projects/{project}/branches", json=_create_body(name))
    assert name not in _names(client, project)


def test_drop_after_creates_then_drops(client: httpx.Client, server: LocalServerInfo) -> None:
    project = server.project_id
    _set(client, "drop_after=1,methods=POST,limit=1")
    name = f"lost-{secrets.token_hex(3)}"
    with pytest.raises(DROPPED):
        client.post(f"/projects/{project}/branches", json=_create_body(name))
    listing = client.get(f"/projects/{project}/branches", params={"search": name}).json()
    [branch] = listing["branches"]
    assert branch["name"] == name
    ops = [
        op
        for op in client.get(f"/projects/{project}/operations").json()["operations"]
        if op["branch_id"] == branch["id"]
    ]
    wait_operations(client, project, ops)
    deleted = client.delete(f"/projects/{project}/branches/{branch['id']}")
    wait_operations(client, project, deleted.json()["operations"])


def test_op_fail_ends_failed_and_removes_the_branch(client: httpx.Client, server: LocalServerInfo) -> None:
    project = server.project_id
    _set(client, "op_fail=1")
    name = f"doomed-{secrets.token_hex(3)}"
    answer = client.post(f"/projects/{project}/branches", json=_create_body(name))
    assert answer.status_code == 201
    finals = wait_operations(client, project, answer.json()["operations"])
    assert {op["status"] for op in finals} == {"failed"}
    assert all(op["failures_count"] >= 1 and op["error"] for op in finals)
    branch_id = answer.json()["branch"]["id"]
    assert client.get(f"/projects/{project}/branches/{branch_id}").status_code == 404
    assert name not in _names(client, project)


def test_op_fail_on_delete_keeps_the_branch(client: httpx.Client, server: LocalServerInfo) -> None:
    project = server.project_id
    created = create_ready_branch(client, project, name=f"keep-{secrets.token_hex(3)}")
    branch_id = created["branch"]["id"]
    _set(client, "op_fail=1")
    answer = client.delete(f"/projects/{project}/branches/{branch_id}")
    finals = wait_operations(client, project, answer.json()["operations"])
    assert {op["status"] for op in finals} == {"failed"}
    assert client.get(f"/projects/{project}/branches/{branch_id}").status_code == 200
    _set(client, "")
    answer = client.delete(f"/projects/{project}/branches/{branch_id}")
    assert {op["status"] for op in wait_operations(client, project, answer.json()["operations"])} == {
        "finished"
    }


def test_faults_from_start_configuration(tmp_path: Path) -> None:
    with start_test_server(tmp_path / "home", faults="rate429=1,limit=1") as info, api_client(info) as client:
        first = client.get("/auth")
        assert first.status_code == 429 and first.headers["retry-after"] == "1"
        assert client.get("/auth").status_code == 200
