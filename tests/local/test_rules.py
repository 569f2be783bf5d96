"""Rules Neon enforces, enforced by the local server too, so what passes locally does
not fail on Neon: the project lock (423 while operations run, retried for real by the
harness's client), expiry, protection, restore with `preserve_under_name`, the branch
limit `/users/me` advertises, schema-only branches as root branches."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
from cathouse_harness.local.control.control import DEFAULT_ROOT_BRANCHES_LIMIT
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.neon.client import NeonClient, TransportOptions
from cathouse_harness.support.timestamps import parse_time

from tests.local._server import (
    api_client,
    connection_uri,
    create_branch,
    create_ready_branch,
    default_branch,
    delete_branch,
    in_future,
    sql,
    start_test_server,
    unique,
    wait_operations,
)


def _error(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    return str(answer.json()["message"])


# ---------------------------------------------------------------------- the lock


def test_mutations_answer_423_while_the_project_has_running_operations(
    client: httpx.Client, project: str
) -> None:
    base = f"/projects/{project}/branches"
    other = create_ready_branch(client, project, name=unique("other"))["branch"]
    assert client.put("/_local/faults", json={"spec": "op_delay=1"}).status_code == 200
    try:
        slow = create_branch(client, project, name=unique("slow"))
    finally:
        client.put("/_local/faults", json={"spec": ""})
    # Project scope: a mutation of any other branch or endpoint waits too.
    message = _error(client.patch(f"{base}/{other['id']}", json={"branch": {"name": unique("x")}}), 423)
    assert slow["operations"][0]["id"] in message and "retry" in message
    _error(client.delete(f"{base}/{other['id']}"), 423)
    _error(client.post(base, json={"branch": {"name": unique("third")}}), 423)
    _error(
        client.post(
            f"/projects/{project}/endpoints",
            json={"endpoint": {"branch_id": other["id"], "type": "read_only"}},
        ),
        423,
    )
    # Reads are never locked.
    assert client.get(f"{base}/{other['id']}").status_code == 200
    wait_operations(client, project, slow["operations"])
    for branch_id in (slow["branch"]["id"], other["id"]):
        delete_branch(client, project, branch_id)


def test_the_harness_client_retries_the_lock_for_real(
    server: LocalServerInfo, client: httpx.Client, project: str
) -> None:
    assert client.put("/_local/faults", json={"spec": "op_delay=0.5"}).status_code == 200
    try:
        slow = create_branch(client, project, name=unique("holder"))
    finally:
        client.put("/_local/faults", json={"spec": ""})

    async def create_while_locked() -> tuple[str, int]:
        async with NeonClient(server.api_key.reveal(), TransportOptions(api_host=server.api_host)) as neon:
            made = await neon.create_branch(project, name=unique("waiter"))
            return made.branch.id, neon.stats.retries

    branch_id, retries = asyncio.run(create_while_locked())
    assert retries >= 1, "the create never met the lock"
    wait_operations(client, project, slow["operations"])
    for made in (branch_id, slow["branch"]["id"]):
        delete_branch(client, project, made)


# ---------------------------------------------------------------------- expiry


def test_expiry_rules(client: httpx.Client, project: str) -> None:
    base = f"/projects/{project}/branches"
    expiring = create_ready_branch(
        client, project, name=unique("exp"), expires_at=in_future(timedelta(hours=1))
    )
    exp_id = expiring["branch"]["id"]
    made = expiring["branch"]
    ttl = made["ttl_interval_seconds"]
    assert timedelta(seconds=ttl) == parse_time(made["expires_at"]) - parse_time(made["created_at"])
    assert "children" in _error(client.post(base, json={"branch": {"parent_id": exp_id}}), 400)
    assert "default" in _error(client.post(f"{base}/{exp_id}/set_as_default"), 400)
    assert "protected" in _error(client.patch(f"{base}/{exp_id}", json={"branch": {"protected": True}}), 400)

    parent = create_ready_branch(client, project, name=unique("parent"))["branch"]
    child = create_ready_branch(client, project, name=unique("child"), parent_id=parent["id"])["branch"]
    later = {"branch": {"expires_at": in_future(timedelta(hours=1))}}
    assert "children" in _error(client.patch(f"{base}/{parent['id']}", json=later), 400)
    # A child may expire; clearing an expiry is always allowed.
    assert client.patch(f"{base}/{child['id']}", json=later).status_code == 200
    assert client.patch(f"{base}/{child['id']}", json={"branch": {"expires_at": None}}).status_code == 200

    # A reset starts the countdown again: expires_at is the reset plus the same interval.
    restored = client.post(
        f"{base}/{exp_id}/restore", json={"source_branch_id": default_branch(client, project)["id"]}
    )
    assert restored.status_code == 200, restored.text
    wait_operations(client, project, restored.json()["operations"])
    after = client.get(f"{base}/{exp_id}").json()["branch"]
    assert after["ttl_interval_seconds"] == ttl
    assert parse_time(after["expires_at"]) - parse_time(after["last_reset_at"]) == timedelta(seconds=ttl)
    for branch_id in (child["id"], parent["id"], exp_id):
        delete_branch(client, project, branch_id)


# ---------------------------------------------------------------------- protection, roots


def test_protected_branch_is_neither_reset_nor_deleted(client: httpx.Client, project: str) -> None:
    base = f"/projects/{project}/branches"
    guarded = create_ready_branch(client, project, name=unique("guarded"), protected=True)["branch"]
    source = {"source_branch_id": default_branch(client, project)["id"]}
    assert "protected" in _error(client.post(f"{base}/{guarded['id']}/restore", json=source), 400)
    assert "protected" in _error(client.delete(f"{base}/{guarded['id']}"), 400)
    client.patch(f"{base}/{guarded['id']}", json={"branch": {"protected": False}})
    delete_branch(client, project, guarded["id"])


# ---------------------------------------------------------------------- restore


def test_restore_from_another_branch_and_preserve_under_name(client: httpx.Client, project: str) -> None:
    base = f"/projects/{project}/branches"
    target = create_ready_branch(client, project, name=unique("target"))["branch"]
    donor = create_ready_branch(client, project, name=unique("donor"))["branch"]
    target_uri = connection_uri(client, project, target["id"], pooled=False)
    sql(target_uri, "CREATE TABLE origin AS SELECT 'target' AS who")
    sql(
        connection_uri(client, project, donor["id"], pooled=False),
        "CREATE TABLE origin AS SELECT 'donor' AS who",
    )
    child = create_ready_branch(client, project, name=unique("kid"), parent_id=target["id"])["branch"]

    source = {"source_branch_id": donor["id"]}
    assert "preserve_under_name" in _error(client.post(f"{base}/{target['id']}/restore", json=source), 400)
    kept = unique("target-old")
    answer = client.post(f"{base}/{target['id']}/restore", json={**source, "preserve_under_name": kept})
    assert answer.status_code == 200, answer.text
    wait_operations(client, project, answer.json()["operations"])

    # The target now holds the donor's data, through the same endpoint and URL.
    assert sql(target_uri, "SELECT who FROM origin")[0]["who"] == "donor"
    # Its previous state lives on under the new name, with the children it had.
    [saved] = [b for b in client.get(base, params={"search": kept}).json()["branches"] if b["name"] == kept]
    assert client.get(f"{base}/{child['id']}").json()["branch"]["parent_id"] == saved["id"]
    made = client.post(
        f"/projects/{project}/endpoints", json={"endpoint": {"branch_id": saved["id"], "type": "read_write"}}
    )
    assert made.status_code == 201, made.text
    wait_operations(client, project, made.json()["operations"])
    saved_uri = connection_uri(client, project, saved["id"], pooled=False)
    assert sql(saved_uri, "SELECT who FROM origin")[0]["who"] == "target"
    for branch_id in (child["id"], saved["id"], target["id"], donor["id"]):
        delete_branch(client, project, branch_id)


# ---------------------------------------------------------------------- limits


def test_creates_stop_at_the_advertised_branch_limit(tmp_path: Path) -> None:
    with start_test_server(tmp_path / "limited", branches_limit=2) as info, api_client(info) as client:
        project = info.project_id
        assert client.get("/users/me").json()["branches_limit"] == 2
        made = create_ready_branch(client, project, name="second")
        answer = client.post(f"/projects/{project}/branches", json={"branch": {"name": "third"}})
        assert answer.status_code == 422 and "limit of 2" in answer.json()["message"]
        delete_branch(client, project, made["branch"]["id"])
        assert create_ready_branch(client, project, name="third")["branch"]["name"] == "third"


# ---------------------------------------------------------------------- schema-only


def test_schema_only_branches_are_root_branches(client: httpx.Client, project: str) -> None:
    """No parent, the source's tables without their rows, no reset from a parent, and
    (unlike the project's own root) deletable."""
    main = default_branch(client, project)
    main_uri = connection_uri(client, project, main["id"], pooled=False)
    table = f"so_{unique('t').replace('-', '_')}"
    sql(main_uri, f"CREATE TABLE {table} AS SELECT 1 AS v")
    made = create_ready_branch(
        client, project, name=unique("schema"), parent_id=main["id"], init_source="schema-only"
    )["branch"]
    fetched = client.get(f"/projects/{project}/branches/{made['id']}").json()["branch"]
    assert "parent_id" not in fetched and fetched["init_source"] == "schema-only"
    uri = connection_uri(client, project, made["id"], pooled=False)
    assert sql(uri, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0

    reset = {"source_branch_id": main["id"]}
    message = _error(client.post(f"/projects/{project}/branches/{made['id']}/restore", json=reset), 400)
    assert "schema-only" in message and "root" in message
    # the project's own root stays undeletable when it is no longer the default
    base = f"/projects/{project}/branches"
    assert client.post(f"{base}/{made['id']}/set_as_default").status_code == 200
    assert "root branch" in _error(client.delete(f"{base}/{main['id']}"), 400)
    assert client.post(f"{base}/{main['id']}/set_as_default").status_code == 200
    delete_branch(client, project, made["id"])
    sql(main_uri, f"DROP TABLE {table}")


def test_schema_only_branches_count_against_the_root_branch_limit(client: httpx.Client, project: str) -> None:
    listing = client.get(f"/projects/{project}/branches").json()["branches"]
    roots = [b for b in listing if "parent_id" not in b]
    made = [
        create_ready_branch(client, project, name=unique("root"), init_source="schema-only")["branch"]
        for _ in range(DEFAULT_ROOT_BRANCHES_LIMIT - len(roots))
    ]
    over = {"branch": {"name": unique("root"), "init_source": "schema-only"}}
    message = _error(client.post(f"/projects/{project}/branches", json=over), 422)
    assert f"limit of {DEFAULT_ROOT_BRANCHES_LIMIT} root branches" in message
    # a child is not a root: the limit does not stop it
    child = create_ready_branch(client, project, name=unique("child"))["branch"]
    for branch in [child, *made]:
        delete_branch(client, project, branch["id"])
