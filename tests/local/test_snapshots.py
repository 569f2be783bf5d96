"""Snapshots through the HTTP API, on the instance data plane: taken now or at a
timestamp, listed, renamed, deleted, restored into a new branch and finalized onto the
branch they replace; a snapshot outlives its branch. Every answer is checked against
Neon's reference (`api_client`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cathouse_harness.local.control.state import (
    DatabaseRecord,
    RoleRecord,
    SnapshotRecord,
    load_state,
    new_state,
    state_snapshot,
)

from tests.local._server import api_client, connection_uri, delete_branch, start_test_server, wait_operations
from tests.local.test_history import accepted


@dataclass(frozen=True)
class Api:
    client: httpx.Client
    project: str
    home: Path

    def url(self, path: str) -> str:
        return f"/projects/{self.project}{path}"


@contextmanager
def instance_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Api]:
    """A server of the instance data plane in a new home, and a checking client on it."""
    home = tmp_path_factory.mktemp(name)
    home.chmod(0o700)
    with start_test_server(home) as info, api_client(info) as client:
        yield Api(client, info.project_id, home)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with instance_server(tmp_path_factory, "snapshots") as found:
        yield found


def _branch(api: Api, name: str) -> tuple[str, str]:
    """A new branch with a read-write endpoint and a table `t`: (its id, its URL)."""
    made = api.client.post(
        api.url("/branches"), json={"branch": {"name": name}, "endpoints": [{"type": "read_write"}]}
    )
    assert made.status_code == 201, made.text
    wait_operations(api.client, api.project, made.json()["operations"])
    branch_id = made.json()["branch"]["id"]
    url = connection_uri(api.client, api.project, branch_id, pooled=False)
    with psycopg.connect(url) as session:
        session.execute("CREATE TABLE t (v text)")
    return branch_id, url


def _write(url: str, value: str) -> None:
    with psycopg.connect(url) as session:
        session.execute("INSERT INTO t VALUES (%s)", (value,))


def _rows(url: str) -> list[str]:
    with psycopg.connect(url) as session:
        return [v for (v,) in session.execute("SELECT v FROM t ORDER BY v")]


def _snapshot(api: Api, branch_id: str, **params: str) -> dict[str, Any]:
    answer = api.client.post(api.url(f"/branches/{branch_id}/snapshot"), params=params)
    assert answer.status_code == 200, answer.text
    wait_operations(api.client, api.project, answer.json()["operations"])
    return dict(answer.json()["snapshot"])


def _restore(api: Api, snapshot_id: str, **body: Any) -> dict[str, Any]:
    answer = api.client.post(api.url(f"/snapshots/{snapshot_id}/restore"), json=body)
    assert answer.status_code == 200, answer.text
    wait_operations(api.client, api.project, answer.json()["operations"])
    branch_id = answer.json()["branch"]["id"]
    return dict(api.client.get(api.url(f"/branches/{branch_id}")).json()["branch"])


def _endpoint_url(api: Api, branch_id: str) -> str:
    made = api.client.post(
        api.url("/endpoints"), json={"endpoint": {"branch_id": branch_id, "type": "read_write"}}
    )
    assert made.status_code == 201, made.text
    wait_operations(api.client, api.project, made.json()["operations"])
    return connection_uri(api.client, api.project, branch_id, pooled=False)


def _listed(api: Api) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in api.client.get(api.url("/snapshots")).json()["snapshots"]}


def test_a_restore_has_the_data_written_before_the_snapshot_not_after(api: Api) -> None:
    branch_id, url = _branch(api, "snap-source")
    _write(url, "before")
    snapshot = _snapshot(api, branch_id, name="nightly")
    _write(url, "after")
    assert snapshot["name"] == "nightly" and snapshot["source_branch_id"] == branch_id
    listed = _listed(api)[snapshot["id"]]
    assert listed == {**snapshot, "lsn": listed["lsn"]}  # the copy's WAL position, once taken
    restored = _restore(api, snapshot["id"], name="from-nightly")
    assert restored["name"] == "from-nightly" and restored["current_state"] == "ready"
    assert (restored["restored_from"], restored["restored_as"], restored["restore_status"]) == (
        snapshot["id"],
        branch_id,
        "restored",
    )
    assert _rows(_endpoint_url(api, restored["id"])) == ["before"]
    assert _rows(url) == ["after", "before"]  # the source is untouched until a finalize


def test_a_snapshot_outlives_its_branch(api: Api) -> None:
    branch_id, url = _branch(api, "snap-gone")
    _write(url, "kept")
    snapshot = _snapshot(api, branch_id)
    delete_branch(api.client, api.project, branch_id)
    refused = api.client.post(
        api.url(f"/snapshots/{snapshot['id']}/restore"), json={"finalize_restore": True}
    )
    assert refused.status_code == 400 and "target_branch_id" in refused.json()["message"]
    restored = _restore(api, snapshot["id"])
    assert "restored_as" not in restored
    assert _rows(_endpoint_url(api, restored["id"])) == ["kept"]


def test_finalize_moves_the_endpoints_and_the_name(api: Api) -> None:
    branch_id, url = _branch(api, "snap-final")
    _write(url, "one")
    snapshot = _snapshot(api, branch_id)
    _write(url, "two")
    restored = _restore(api, snapshot["id"])
    assert _rows(_endpoint_url(api, restored["id"])) == ["one"]  # a preview of its own
    answer = api.client.post(
        api.url(f"/branches/{restored['id']}/finalize_restore"), json={"name": "snap-final-old"}
    )
    assert answer.status_code == 200, answer.text
    assert _rows(url) == ["one"]  # the same URL reaches the restored branch now
    # the endpoints changed places: one read-write endpoint each, the preview's on the old branch
    for owner in (branch_id, restored["id"]):
        assert len(api.client.get(api.url(f"/branches/{owner}/endpoints")).json()["endpoints"]) == 1
    assert _rows(connection_uri(api.client, api.project, branch_id, pooled=False)) == ["one", "two"]
    names = {b["id"]: b for b in api.client.get(api.url("/branches")).json()["branches"]}
    assert (
        names[restored["id"]]["name"] == "snap-final"
        and names[restored["id"]]["restore_status"] == "finalized"
    )
    assert names[branch_id]["name"] == "snap-final-old"
    again = api.client.post(api.url(f"/branches/{restored['id']}/finalize_restore"))
    assert again.status_code == 400


def test_finalize_restore_true_replaces_the_target_at_once(api: Api) -> None:
    branch_id, url = _branch(api, "snap-at-once")
    _write(url, "a")
    snapshot = _snapshot(api, branch_id)
    _write(url, "b")
    restored = _restore(api, snapshot["id"], target_branch_id=branch_id, finalize_restore=True)
    assert restored["name"] == "snap-at-once" and restored["restore_status"] == "finalized"
    assert _rows(url) == ["a"]


def test_a_snapshot_at_a_timestamp(api: Api) -> None:
    branch_id, url = _branch(api, "snap-past")
    _write(url, "early")

    def take(stamp: str) -> httpx.Response:
        return api.client.post(api.url(f"/branches/{branch_id}/snapshot"), params={"timestamp": stamp})

    answer, stamp = accepted(take)
    assert answer.status_code == 200, answer.text
    wait_operations(api.client, api.project, answer.json()["operations"])
    _write(url, "late")
    assert answer.json()["snapshot"]["timestamp"] == stamp[:19] + "Z"
    restored = _restore(api, answer.json()["snapshot"]["id"])
    assert _rows(_endpoint_url(api, restored["id"])) == ["early"]


def test_a_snapshot_between_two_writes_is_replayed_from_the_branch_s_wal(api: Api) -> None:
    """No branch holds the state between two writes: the snapshot is the branch's base
    and WAL replayed to the point, at a timestamp and at an LSN alike."""
    branch_id, url = _branch(api, "snap-replay")
    with psycopg.connect(url, autocommit=True) as session:
        session.execute("INSERT INTO t VALUES ('first')")
        lsn = str(session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        between = datetime.now(UTC).isoformat()
        session.execute("INSERT INTO t VALUES ('second')")
    for point in ({"timestamp": between}, {"lsn": lsn}):
        snapshot = _snapshot(api, branch_id, **point)
        assert snapshot.get("lsn", lsn) == lsn.upper()
        restored = _restore(api, snapshot["id"])
        assert _rows(_endpoint_url(api, restored["id"])) == ["first"], point


def test_rename_delete_and_refusals(api: Api) -> None:
    branch_id, _ = _branch(api, "snap-admin")
    snapshot = _snapshot(api, branch_id, expires_at="2099-01-01T00:00:00Z")
    assert snapshot["expires_at"] == "2099-01-01T00:00:00Z"
    renamed = api.client.patch(
        api.url(f"/snapshots/{snapshot['id']}"), json={"snapshot": {"name": "renamed"}}
    )
    assert renamed.status_code == 200 and renamed.json()["snapshot"]["name"] == "renamed"
    assert renamed.json()["snapshot"]["expires_at"] == "2099-01-01T00:00:00Z"
    cleared = api.client.patch(
        api.url(f"/snapshots/{snapshot['id']}"), json={"snapshot": {"expires_at": None}}
    )
    assert cleared.status_code == 200 and "expires_at" not in cleared.json()["snapshot"]
    assert (
        api.client.patch(api.url(f"/snapshots/{snapshot['id']}"), json={"snapshot": {"name": ""}}).status_code
        == 400
    )
    gone = api.client.delete(api.url(f"/snapshots/{snapshot['id']}"))
    assert gone.status_code == 202, gone.text
    wait_operations(api.client, api.project, gone.json()["operations"])
    assert snapshot["id"] not in _listed(api)
    assert api.client.delete(api.url(f"/snapshots/{snapshot['id']}")).status_code == 404
    assert api.client.post(api.url(f"/snapshots/{snapshot['id']}/restore")).status_code == 404
    bad = api.client.post(
        api.url(f"/branches/{branch_id}/snapshot"), params={"expires_at": "2001-01-01T00:00:00Z"}
    )
    assert bad.status_code == 400 and "future" in bad.json()["message"]
    both = api.client.post(
        api.url(f"/branches/{branch_id}/snapshot"), params={"lsn": "0/1", "timestamp": "2030-01-01T00:00:00Z"}
    )
    assert both.status_code == 400
    not_restored = api.client.post(api.url(f"/branches/{branch_id}/finalize_restore"))
    assert not_restored.status_code == 400 and "restoreSnapshot" in not_restored.json()["message"]


def test_an_expired_snapshot_is_deleted(api: Api) -> None:
    branch_id, _ = _branch(api, "snap-expiring")
    soon = time.time() + 2
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon + 1))
    snapshot = _snapshot(api, branch_id, expires_at=stamp)
    deadline = time.monotonic() + 30
    while snapshot["id"] in _listed(api):
        assert time.monotonic() < deadline, "the expired snapshot is still listed"
        time.sleep(0.2)


def test_snapshot_records_survive_the_state_file(tmp_path: Path) -> None:
    state = new_state(storage="disk")
    record = SnapshotRecord("snap-x", "n", "br-x", "2026-01-01T00:00:00Z", "sn-1", lsn="0/1", ready=True)
    record.databases["neondb"] = DatabaseRecord(1, "neondb", "neondb_owner", "t", "t", "db_1")
    record.roles["neondb_owner"] = RoleRecord("neondb_owner", "t", "t", password="pw")
    state.snapshots[record.id] = record
    path, text = state_snapshot(state, tmp_path)
    path.write_text(text)
    loaded = load_state(tmp_path, "disk")
    assert loaded is not None and loaded.snapshots == {record.id: record}


def test_a_snapshot_survives_a_restart_of_a_disk_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The record is in the project's state and its copy in the home's instances: a
    restarted server lists it and restores it, its branch long deleted."""
    home = tmp_path_factory.mktemp("snapshots-disk")
    home.chmod(0o700)
    with start_test_server(home, storage="disk", keep_data=True) as info, api_client(info) as client:
        before = Api(client, info.project_id, home)
        branch_id, url = _branch(before, "kept-on-disk")
        _write(url, "kept")
        snapshot = _snapshot(before, branch_id)
        delete_branch(client, info.project_id, branch_id)
    with start_test_server(home, storage="disk") as info, api_client(info) as client:
        after = Api(client, info.project_id, home)
        assert snapshot["id"] in _listed(after)
        restored = _restore(after, snapshot["id"])
        assert _rows(_endpoint_url(after, restored["id"])) == ["kept"]
