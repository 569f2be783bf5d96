"""Where the local server knowingly differs from Neon: one test per row of docs/embedded.md's
divergence table, so a row cannot go stale unnoticed (a fix makes its test fail, and
the row and the test go together)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from tests.local._server import (
    connection_uri,
    create_ready_branch,
    delete_branch,
    sql,
    unique,
    wait_operations,
)


async def _script(uri: str, *statements: str) -> None:
    """Statements one after another on one connection (a SET holds for the next)."""
    conn = await asyncpg.connect(uri)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def test_history_only_where_the_server_kept_it(client: httpx.Client, project: str) -> None:
    """A branch's WAL since its base is kept and replayed, so a branch at a moment
    between two writes is served (tests/local/test_history.py has the rest); its schema
    at such a moment is refused (Neon serves both for its whole retention window)."""
    base = f"/projects/{project}/branches"
    made = create_ready_branch(client, project, name=unique("written"))["branch"]
    uri = connection_uri(client, project, made["id"], pooled=False)
    sql(uri, "CREATE TABLE t AS SELECT 1 AS v")
    between = datetime.now(UTC).isoformat()
    sql(uri, "INSERT INTO t VALUES (2)")
    answer = client.post(base, json={"branch": {"parent_id": made["id"], "parent_timestamp": between},
                                     "endpoints": [{"type": "read_write"}]})
    assert answer.status_code == 201, answer.text
    wait_operations(client, project, answer.json()["operations"])
    child = answer.json()["branch"]["id"]
    assert sql(connection_uri(client, project, child, pooled=False), "SELECT v FROM t")[0]["v"] == 1
    delete_branch(client, project, child)
    params = {"db_name": "cathouse", "timestamp": between}
    assert client.get(f"{base}/{made['id']}/schema", params=params).status_code == 400
    delete_branch(client, project, made["id"])


def test_every_branch_gets_passwords_of_its_own(client: httpx.Client, project: str) -> None:
    """Neon copies a parent's role passwords to its child (unless the parent is
    protected); here every new branch gets its own, so that a password opens one branch
    only (#14), and a reset changes the one branch's."""
    base = f"/projects/{project}/branches"
    parent = create_ready_branch(client, project, name=unique("parent"))
    child = create_ready_branch(client, project, name=unique("child"), parent_id=parent["branch"]["id"])

    def password(made: dict[str, object]) -> str:
        branch_id = made["branch"]["id"]  # type: ignore[index]
        return str(client.get(f"{base}/{branch_id}/roles/cathouse_owner/reveal_password").json()["password"])

    before = password(parent)
    assert password(child) != before
    reset = client.post(f"{base}/{child['branch']['id']}/roles/cathouse_owner/reset_password")
    wait_operations(client, project, reset.json()["operations"])
    assert password(child) == reset.json()["role"]["password"] and password(parent) == before
    delete_branch(client, project, child["branch"]["id"])
    delete_branch(client, project, parent["branch"]["id"])


def test_usage_figures_read_zero(client: httpx.Client, project: str) -> None:
    """Nothing is metered: CPU, time, bytes and sizes read 0."""
    made = create_ready_branch(client, project, name=unique("usage"))
    branch = made["branch"]
    usage = (
        "cpu_used_sec",
        "active_time_seconds",
        "compute_time_seconds",
        "written_data_bytes",
        "logical_size",
    )
    assert [branch[k] for k in usage] == [0] * len(usage)
    assert client.get(f"/projects/{project}").json()["project"]["data_storage_bytes_hour"] == 0
    delete_branch(client, project, branch["id"])


def test_computes_do_not_suspend_or_scale_by_themselves(client: httpx.Client, project: str) -> None:
    """An endpoint has no compute: suspend_timeout_seconds and autoscaling limits are
    kept, never acted on; only the API suspends it."""
    made = create_ready_branch(client, project, name=unique("compute"))
    [ep] = made["endpoints"]
    body = {"endpoint": {"suspend_timeout_seconds": 60, "autoscaling_limit_max_cu": 2}}
    patched = client.patch(f"/projects/{project}/endpoints/{ep['id']}", json=body)
    wait_operations(client, project, patched.json()["operations"])
    got = client.get(f"/projects/{project}/endpoints/{ep['id']}").json()["endpoint"]
    assert (got["suspend_timeout_seconds"], got["autoscaling_limit_max_cu"]) == (60, 2)
    assert got["current_state"] == "active"
    delete_branch(client, project, made["branch"]["id"])


def test_read_only_endpoints_are_standbys_of_a_copy(client: httpx.Client, project: str) -> None:
    """A read_only endpoint is a hot standby: it refuses writes whatever a session sets,
    as Neon's read replicas do, and shows its branch as of its copy (a Neon replica
    follows its primary; tests/security/test_branch_instances.py has the rest)."""
    made = create_ready_branch(client, project, name=unique("reader"))
    branch_id = made["branch"]["id"]
    answer = client.post(
        f"/projects/{project}/endpoints", json={"endpoint": {"branch_id": branch_id, "type": "read_only"}}
    )
    wait_operations(client, project, answer.json()["operations"])
    reader = answer.json()["endpoint"]["id"]
    params = {
        "branch_id": branch_id,
        "endpoint_id": reader,
        "database_name": "cathouse",
        "role_name": "cathouse_owner",
    }
    uri = client.get(f"/projects/{project}/connection_uri", params=params).json()["uri"]
    script = _script(uri, "SET default_transaction_read_only = off", "CREATE TABLE written (v int)")
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        asyncio.run(script)
    sql(connection_uri(client, project, branch_id, pooled=False), "CREATE TABLE written (v int)")
    assert (
        sql(connection_uri(client, project, branch_id, pooled=False), "SELECT count(*) AS n FROM written")[0][
            "n"
        ]
        == 0
    )
    delete_branch(client, project, branch_id)


def test_one_project_one_region_no_organizations(client: httpx.Client, project: str) -> None:
    """A local server is one project: no project create or delete, one region, no orgs."""
    assert [p["id"] for p in client.get("/projects").json()["projects"]] == [project]
    assert client.post("/projects", json={"project": {}}).status_code == 405
    assert [r["region_id"] for r in client.get("/regions").json()["regions"]] == ["local"]
    assert client.get("/users/me/organizations").json()["organizations"] == []


def test_refusals_have_our_codes(client: httpx.Client, project: str) -> None:
    """Neon's reference gives error bodies a code but lists no codes, and no status for
    these refusals: ours are 409 CONFLICT (names, a second read_write endpoint) and
    422 (a parent's delete, a role owning databases, the branch limit)."""
    base = f"/projects/{project}/branches"
    name = unique("dup")
    made = create_ready_branch(client, project, name=name)
    dup = client.post(base, json={"branch": {"name": name}})
    assert (dup.status_code, dup.json()["code"]) == (409, "CONFLICT")
    child = create_ready_branch(client, project, name=unique("kid"), parent_id=made["branch"]["id"])
    refused = client.delete(f"{base}/{made['branch']['id']}")
    assert (refused.status_code, refused.json()["code"]) == (422, "BRANCH_HAS_CHILDREN")
    for branch_id in (child["branch"]["id"], made["branch"]["id"]):
        delete_branch(client, project, branch_id)


def test_no_rate_limit(client: httpx.Client, project: str) -> None:
    """Neon allows about 11 requests a second (bursts of 40 a route) and answers 429
    beyond; the local server only does so when faults are injected."""
    statuses = {client.get(f"/projects/{project}").status_code for _ in range(60)}
    assert statuses == {200}


def test_deleted_branches_are_gone_at_once(client: httpx.Client, project: str) -> None:
    """Neon keeps a deleted branch recoverable for 7 days; here its databases are dropped."""
    made = create_ready_branch(client, project, name=unique("gone"))
    uri = connection_uri(client, project, made["branch"]["id"], pooled=False)
    delete_branch(client, project, made["branch"]["id"])
    with pytest.raises(Exception):  # noqa: B017 - no listener, or no database: both mean gone
        sql(uri, "SELECT 1")
