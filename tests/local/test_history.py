"""Points in time on the local server, driven with plain httpx requests built from Neon's
reference: `parent_timestamp` / `parent_lsn` on a create, `source_timestamp` /
`source_lsn` on a restore, `timestamp` / `lsn` (and `base_…`) on the schema routes,
checked in real PostgreSQL (the rows and tables at the point).

The server knows a branch's past through the connections to its endpoints
(`cathouse_harness.local.control.history`); it learns that a client left a moment after the client did,
so a request for "now" right after a write is polled until the server has seen the
client go (`accepted`), as a client polls an operation."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.local._server import (
    connection_uri,
    create_ready_branch,
    default_branch,
    delete_branch,
    sql,
    unique,
    wait_operations,
)

LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")


def moment() -> str:
    """Now, to the microsecond, as a client would send it."""
    return datetime.now(UTC).isoformat()


def accepted(send: Callable[[str], httpx.Response], timeout: float = 10.0) -> tuple[httpx.Response, str]:
    """`send(now)` until the server has seen the last client leave (the moment is taken
    afresh each time); the answer and the moment it was sent with."""
    deadline = time.monotonic() + timeout
    while True:
        stamp = moment()
        answer = send(stamp)
        if answer.status_code != 400 or "no kept state" not in answer.text or time.monotonic() > deadline:
            return answer, stamp
        time.sleep(0.02)


def rows(client: httpx.Client, project: str, branch_id: str, table: str) -> list[str]:
    uri = connection_uri(client, project, branch_id, pooled=False)
    return [r["v"] for r in sql(uri, f"SELECT v FROM {table} ORDER BY v")]


def write(client: httpx.Client, project: str, branch_id: str, statement: str) -> None:
    sql(connection_uri(client, project, branch_id, pooled=False), statement)


def create_at(client: httpx.Client, project: str, parent_id: str, **point: str) -> tuple[dict[str, Any], str]:
    """A branch of `parent_id` at `point`, or (no point) at a `parent_timestamp` of now."""

    def send(now: str) -> httpx.Response:
        spec = {"parent_id": parent_id, "name": unique("at"), **(point or {"parent_timestamp": now})}
        return client.post(
            f"/projects/{project}/branches", json={"branch": spec, "endpoints": [{"type": "read_write"}]}
        )

    answer, stamp = accepted(send)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    finals = wait_operations(client, project, made["operations"])
    assert [op["status"] for op in finals] == ["finished"] * len(finals)
    return dict(made["branch"]), point.get("parent_timestamp", stamp)


def restore(client: httpx.Client, project: str, branch_id: str, **body: str) -> httpx.Response:
    """A restore; without a point, as of a `source_timestamp` of now."""
    url = f"/projects/{project}/branches/{branch_id}/restore"
    return accepted(
        lambda now: client.post(
            url, json=body if "source_timestamp" in body else {**body, "source_timestamp": now}
        )
    )[0]


def parent_lsn(client: httpx.Client, project: str, branch_id: str) -> str:
    """A child's `parent_lsn`, read after its copy (polled: it is read in the background)."""
    deadline = time.monotonic() + 10
    while True:
        branch = client.get(f"/projects/{project}/branches/{branch_id}").json()["branch"]
        if "parent_lsn" in branch or time.monotonic() > deadline:
            return str(branch.get("parent_lsn"))
        time.sleep(0.02)


def test_the_project_advertises_its_history_window(client: httpx.Client, project: str) -> None:
    assert client.get(f"/projects/{project}").json()["project"]["history_retention_seconds"] > 0


def test_restore_from_another_branch_as_of_now(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    source = create_ready_branch(client, project, name=unique("src"))["branch"]
    target = create_ready_branch(client, project, name=unique("dst"))["branch"]
    table = f"h_{secrets.token_hex(4)}"
    write(client, project, source["id"], f"CREATE TABLE {table} AS SELECT 'kept' AS v")

    answer = restore(client, project, target["id"], source_branch_id=source["id"])
    assert answer.status_code == 200, answer.text
    wait_operations(client, project, answer.json()["operations"])
    assert rows(client, project, target["id"], table) == ["kept"]
    for branch in (target, source):
        delete_branch(client, project, branch["id"])
    assert main["id"]


def test_branch_and_restore_to_a_kept_past_state(client: httpx.Client, project: str) -> None:
    """A child made at T and not used since holds its parent's state at T: after the
    parent changed, a branch from the parent at T, or the parent restored to T, has the
    rows of T and not the later ones; the parent's later state is kept under
    preserve_under_name."""
    base = create_ready_branch(client, project, name=unique("base"))["branch"]
    table = f"h_{secrets.token_hex(4)}"
    write(client, project, base["id"], f"CREATE TABLE {table} AS SELECT 'first' AS v")
    kept, then = create_at(client, project, base["id"])
    lsn = parent_lsn(client, project, kept["id"])
    assert LSN.match(lsn) and lsn != "0/0", lsn
    write(client, project, base["id"], f"INSERT INTO {table} VALUES ('second')")
    write(client, project, base["id"], f"CREATE TABLE {table}_late ()")

    at_time, _ = create_at(client, project, base["id"], parent_timestamp=then)
    assert at_time["parent_timestamp"] == then[:19] + "Z"
    assert rows(client, project, at_time["id"], table) == ["first"]
    schema = f"/projects/{project}/branches/{base['id']}/schema"
    assert f"{table}_late" in client.get(schema, params={"db_name": "cathouse"}).json()["sql"]
    past = client.get(schema, params={"db_name": "cathouse", "timestamp": then}).json()["sql"]
    assert table in past and f"{table}_late" not in past
    diff = client.get(
        f"/projects/{project}/branches/{base['id']}/compare_schema",
        params={"db_name": "cathouse", "base_branch_id": base["id"], "base_lsn": lsn},
    ).json()["diff"]
    assert f"+CREATE TABLE public.{table}_late" in diff
    at_lsn, _ = create_at(client, project, base["id"], parent_lsn=lsn)
    assert at_lsn["parent_lsn"] == lsn
    assert rows(client, project, at_lsn["id"], table) == ["first"]

    saved = unique("saved")
    answer = restore(
        client,
        project,
        base["id"],
        source_branch_id=base["id"],
        source_timestamp=then,
        preserve_under_name=saved,
    )
    assert answer.status_code == 200, answer.text
    wait_operations(client, project, answer.json()["operations"])
    assert rows(client, project, base["id"], table) == ["first"]
    listing = client.get(f"/projects/{project}/branches", params={"search": saved}).json()["branches"]
    [preserved] = [b for b in listing if b["name"] == saved]
    endpoint = {"endpoint": {"branch_id": preserved["id"], "type": "read_write"}}
    made = client.post(f"/projects/{project}/endpoints", json=endpoint)
    assert made.status_code == 201, made.text
    wait_operations(client, project, made.json()["operations"])
    assert rows(client, project, preserved["id"], table) == ["first", "second"]
    for branch in (at_lsn, at_time, kept):
        delete_branch(client, project, branch["id"])
    delete_branch(client, project, base["id"])
    delete_branch(client, project, preserved["id"])


def test_points_outside_the_history_are_refused_in_one_line(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    base = f"/projects/{project}/branches"
    cases = [
        ({"parent_timestamp": "2020-01-01T00:00:00Z"}, "retention"),
        ({"parent_timestamp": "2999-01-01T00:00:00Z"}, "future"),
        ({"parent_lsn": "FFFFFFFF/FFFFFFFF"}, "future"),
        ({"parent_lsn": "not-an-lsn"}, "LSN"),
        ({"parent_timestamp": "yesterday"}, "RFC 3339"),
        ({"parent_lsn": "0/1", "parent_timestamp": moment()}, "not both"),
    ]
    for point, words in cases:
        answer = client.post(base, json={"branch": {"parent_id": main["id"], **point}})
        assert answer.status_code == 400 and words in answer.json()["message"], (point, answer.text)
        assert "\n" not in answer.json()["message"]
    restore = {
        "source_branch_id": main["id"],
        "source_timestamp": "2020-01-01T00:00:00Z",
        "preserve_under_name": unique("never"),
    }
    answer = client.post(f"{base}/{main['id']}/restore", json=restore)
    assert answer.status_code == 400 and "retention" in answer.json()["message"]


def test_restoring_a_branch_to_its_own_history_needs_a_point_and_a_name(
    client: httpx.Client, project: str
) -> None:
    """As Neon's reference has it: source_branch_id equal to the branch needs
    source_lsn or source_timestamp, and preserve_under_name."""
    made = create_ready_branch(client, project, name=unique("own"))["branch"]
    url = f"/projects/{project}/branches/{made['id']}/restore"
    answer = client.post(url, json={"source_branch_id": made["id"]})
    assert answer.status_code == 400 and "source_timestamp" in answer.json()["message"]
    answer = client.post(url, json={"source_branch_id": made["id"], "source_timestamp": moment()})
    assert answer.status_code == 400 and "preserve_under_name" in answer.json()["message"]
    delete_branch(client, project, made["id"])
