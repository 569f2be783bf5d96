"""The local Neon API v2 over plain HTTP, against real PostgreSQL through the real data plane."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from cathouse_harness.local.server import LocalServerInfo

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


def _assert_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["message"]
    assert answer.headers["x-neon-ret-request-id"] == body["request_id"]
    return dict(body)


# ---------------------------------------------------------------------- account, project


def test_auth_and_project(client: httpx.Client, project: str) -> None:
    auth = client.get("/auth")
    assert auth.status_code == 200
    assert auth.headers["x-neon-ret-request-id"]
    projects = client.get("/projects").json()["projects"]
    assert [p["id"] for p in projects] == [project]
    body = client.get(f"/projects/{project}").json()["project"]
    assert body["id"] == project and "default_branch_id" not in body
    main = default_branch(client, project)  # Neon's way: the branch with `default: true`
    assert main["name"] == "main" and main["protected"] is False
    assert main["current_state"] == "ready" and "parent_id" not in main


def test_missing_or_wrong_key_is_401(server: LocalServerInfo, project: str) -> None:
    with httpx.Client(base_url=server.api_host) as anonymous:
        _assert_error(anonymous.get(f"/projects/{project}/branches"), 401)
    with api_client(server, key="napi_local_wrong") as wrong:
        body = _assert_error(wrong.get("/auth"), 401)
    assert server.api_key.reveal() not in body["message"]
    with api_client(server, key=server.api_key.reveal() + "x") as longer:
        _assert_error(longer.get("/auth"), 401)


def test_key_file_is_private_and_info_hides_key(server: LocalServerInfo) -> None:
    mode = (server.home / "local-api-key").stat().st_mode & 0o777
    assert mode == 0o600
    assert (server.home / "local-state.json").stat().st_mode & 0o777 == 0o600
    assert server.api_key.reveal() not in repr(server)
    assert server.api_key.reveal().startswith("napi_local_")


def test_unknown_ids_are_404(client: httpx.Client, project: str) -> None:
    _assert_error(client.get("/projects/no-such-project/branches"), 404)
    _assert_error(client.get(f"/projects/{project}/branches/br-none-none-00000000"), 404)
    # Deleting what is not there is not an error on Neon: 204, no body.
    gone = client.delete(f"/projects/{project}/branches/br-none-none-00000000")
    assert gone.status_code == 204 and not gone.content
    _assert_error(client.get(f"/projects/{project}/endpoints/ep-none-none-00000000"), 404)
    _assert_error(client.get(f"/projects/{project}/operations/{'0' * 8}-0000-0000-0000-{'0' * 12}"), 404)
    _assert_error(client.get("/nothing-here"), 404)


# ---------------------------------------------------------------------- branch lifecycle


def test_branch_lifecycle_data_isolation_restore_delete(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    main_uri = connection_uri(client, project, main["id"], pooled=False)
    table = f"t_{secrets.token_hex(4)}"
    sql(main_uri, f"CREATE TABLE {table} (v text)")
    sql(main_uri, f"INSERT INTO {table} VALUES ('before-fork')")

    created = create_branch(client, project, name=unique("life"), parent_id=main["id"])
    branch = created["branch"]
    assert branch["id"].startswith("br-") and branch["parent_id"] == main["id"]
    assert branch["current_state"] == "init"
    assert [op["action"] for op in created["operations"]] == ["create_branch", "start_compute"]
    assert {op["status"] for op in created["operations"]} <= {"scheduling", "running"}
    [endpoint] = created["endpoints"]
    assert endpoint["id"].startswith("ep-") and endpoint["type"] == "read_write"
    assert endpoint["branch_id"] == branch["id"]
    # The project's one role and database (the configured ones), as Neon makes them.
    [role] = created["roles"]
    [database] = created["databases"]
    assert (role["name"], database["name"]) == ("cathouse_owner", "cathouse")
    [conn] = created["connection_uris"]
    params = conn["connection_parameters"]
    assert params["database"] == "cathouse" and params["role"] == "cathouse_owner"
    assert params["password"] == role["password"]

    finals = wait_operations(client, project, created["operations"])
    assert [op["status"] for op in finals] == ["finished", "finished"]
    got = client.get(f"/projects/{project}/branches/{branch['id']}").json()["branch"]
    assert got["current_state"] == "ready"
    ep = client.get(f"/projects/{project}/endpoints/{endpoint['id']}").json()["endpoint"]
    assert ep["current_state"] in ("active", "idle")

    direct = connection_uri(client, project, branch["id"], pooled=False)
    pooled = connection_uri(client, project, branch["id"], pooled=True)
    assert direct == conn["connection_uri"]
    assert direct != pooled and direct != main_uri
    assert direct.startswith("postgresql://cathouse_owner:")
    assert ("sslmode=verify-full" in direct) == ("sslmode=verify-full" in pooled)

    # The child sees the parent as of creation, and each side's later writes stay put.
    sql(main_uri, f"INSERT INTO {table} VALUES ('after-fork')")
    sql(direct, f"INSERT INTO {table} VALUES ('child-only')")
    child_rows = {r["v"] for r in sql(pooled, f"SELECT v FROM {table}")}
    assert child_rows == {"before-fork", "child-only"}
    assert {r["v"] for r in sql(main_uri, f"SELECT v FROM {table}")} == {"before-fork", "after-fork"}

    # Restore: the child becomes a copy of the parent's current data.
    restore = client.post(
        f"/projects/{project}/branches/{branch['id']}/restore", json={"source_branch_id": main["id"]}
    )
    assert restore.status_code == 200, restore.text
    assert all(
        op["status"] == "finished" for op in wait_operations(client, project, restore.json()["operations"])
    )
    assert {r["v"] for r in sql(direct, f"SELECT v FROM {table}")} == {"before-fork", "after-fork"}
    assert (
        client.get(f"/projects/{project}/branches/{branch['id']}").json()["branch"]["current_state"]
        == "ready"
    )

    delete_branch(client, project, branch["id"])
    _assert_error(client.get(f"/projects/{project}/branches/{branch['id']}"), 404)
    listed = client.get(f"/projects/{project}/branches").json()["branches"]
    assert branch["id"] not in {b["id"] for b in listed}
    with pytest.raises((OSError, asyncpg.PostgresError)):
        sql(direct, "SELECT 1")
    sql(main_uri, f"DROP TABLE {table}")


def test_schema_only_child_has_tables_but_no_rows(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    main_uri = connection_uri(client, project, main["id"], pooled=False)
    table = f"s_{secrets.token_hex(4)}"
    sql(main_uri, f"CREATE TABLE {table} AS SELECT 1 AS v")
    created = create_ready_branch(client, project, name=unique("schema"), init_source="schema-only")
    uri = connection_uri(client, project, created["branch"]["id"], pooled=False)
    assert sql(uri, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0
    delete_branch(client, project, created["branch"]["id"])
    sql(main_uri, f"DROP TABLE {table}")


def test_annotations_list_and_search(client: httpx.Client, project: str) -> None:
    tag = secrets.token_hex(3)
    first = create_ready_branch(
        client, project, name=f"harness/{tag}/gw0", annotation={"cathouse-harness": tag, "worker": "gw0"}
    )
    second = create_ready_branch(client, project, name=f"other-{tag}")
    ids = {first["branch"]["id"], second["branch"]["id"]}

    listing = client.get(f"/projects/{project}/branches").json()
    assert ids <= {b["id"] for b in listing["branches"]}
    note = listing["annotations"][first["branch"]["id"]]
    assert note["value"] == {"cathouse-harness": tag, "worker": "gw0"}
    assert second["branch"]["id"] not in listing["annotations"]

    found = client.get(f"/projects/{project}/branches", params={"search": f"harness/{tag}"})
    assert [b["id"] for b in found.json()["branches"]] == [first["branch"]["id"]]
    by_id = client.get(f"/projects/{project}/branches", params={"search": second["branch"]["id"]})
    assert [b["id"] for b in by_id.json()["branches"]] == [second["branch"]["id"]]
    single = client.get(f"/projects/{project}/branches/{first['branch']['id']}").json()
    assert single["annotation"]["value"]["worker"] == "gw0"

    for branch_id in ids:
        delete_branch(client, project, branch_id)


def test_duplicate_name_is_refused(client: httpx.Client, project: str) -> None:
    name = unique("dup")
    created = create_ready_branch(client, project, name=name)
    answer = client.post(f"/projects/{project}/branches", json={"branch": {"name": name}})
    _assert_error(answer, 409)
    delete_branch(client, project, created["branch"]["id"])


def test_roles_databases_endpoints_and_password(client: httpx.Client, project: str) -> None:
    created = create_ready_branch(client, project, name=unique("meta"))
    branch_id = created["branch"]["id"]
    base = f"/projects/{project}/branches/{branch_id}"
    roles = client.get(base + "/roles").json()["roles"]
    # Exactly the configured role and database, as Neon's create-project makes them:
    # a client that names neither (neonctl connection-string) finds the one there is.
    assert [r["name"] for r in roles] == ["cathouse_owner"]
    assert all("password" not in r for r in roles)
    databases = client.get(base + "/databases").json()["databases"]
    assert [(d["name"], d["owner_name"]) for d in databases] == [("cathouse", "cathouse_owner")]
    endpoints = client.get(base + "/endpoints").json()["endpoints"]
    assert [e["id"] for e in endpoints] == [created["endpoints"][0]["id"]]
    everything = client.get(f"/projects/{project}/endpoints").json()["endpoints"]
    assert endpoints[0]["id"] in {e["id"] for e in everything}

    password = client.get(base + "/roles/cathouse_owner/reveal_password").json()["password"]
    assert password == created["roles"][0]["password"]
    direct = connection_uri(client, project, branch_id, pooled=False)
    # the parts a client takes from the endpoint: its host, on 5432 unless the URI says
    # otherwise (a machine where endpoints have no addresses of their own)
    parts = urlsplit(direct)
    assert parts.hostname == endpoints[0]["host"] == created["endpoints"][0]["host"]
    rows = asyncio.run(
        _connect_with_parts("cathouse_owner", password, str(parts.hostname), parts.port or 5432)
    )
    assert rows == "cathouse_owner"
    _assert_error(client.get(base + "/roles/nobody/reveal_password"), 404)
    delete_branch(client, project, branch_id)


async def _connect_with_parts(user: str, password: str, host: str, port: int) -> str:
    conn = await asyncpg.connect(
        host=host, port=port, user=user, password=password, database="cathouse", ssl="prefer"
    )
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


# ---------------------------------------------------------------------- rules and refusals


def test_expires_at_rules(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    base = f"/projects/{project}/branches"
    for bad in (
        in_future(timedelta(seconds=-5)),
        in_future(timedelta(days=31)),
        "2030-01-01T00:00:00",
        "tomorrow",
    ):
        body = {"branch": {"name": unique("exp"), "expires_at": bad}}
        _assert_error(client.post(base, json=body), 400)
    _assert_error(
        client.patch(f"{base}/{main['id']}", json={"branch": {"expires_at": in_future(timedelta(hours=1))}}),
        400,
    )
    _assert_error(
        client.post(
            base,
            json={
                "branch": {
                    "name": unique("prot"),
                    "protected": True,
                    "expires_at": in_future(timedelta(hours=1)),
                }
            },
        ),
        400,
    )

    expires = in_future(timedelta(days=29))
    created = create_ready_branch(client, project, name=unique("exp"), expires_at=expires)
    branch_id = created["branch"]["id"]
    assert created["branch"]["expires_at"] == expires
    later = in_future(timedelta(days=2))
    patched = client.patch(f"{base}/{branch_id}", json={"branch": {"expires_at": later}})
    assert patched.status_code == 200 and patched.json()["branch"]["expires_at"] == later
    cleared = client.patch(f"{base}/{branch_id}", json={"branch": {"expires_at": None}})
    assert cleared.status_code == 200 and "expires_at" not in cleared.json()["branch"]
    renamed = client.patch(f"{base}/{branch_id}", json={"branch": {"name": unique("renamed")}})
    assert renamed.json()["branch"]["name"].startswith("renamed-")
    delete_branch(client, project, branch_id)


def test_delete_refusals(client: httpx.Client, project: str) -> None:
    main = default_branch(client, project)
    base = f"/projects/{project}/branches"
    _assert_error(client.delete(f"{base}/{main['id']}"), 400)

    parent = create_ready_branch(client, project, name=unique("parent"))
    child = create_ready_branch(client, project, name=unique("child"), parent_id=parent["branch"]["id"])
    body = _assert_error(client.delete(f"{base}/{parent['branch']['id']}"), 422)
    assert child["branch"]["id"] in body["message"]
    # A branch is not restored onto its own history (none is kept), nor a parent
    # without preserve_under_name.
    _assert_error(client.post(f"{base}/{main['id']}/restore", json={"source_branch_id": main["id"]}), 400)
    _assert_error(
        client.post(f"{base}/{parent['branch']['id']}/restore", json={"source_branch_id": main["id"]}), 400
    )
    delete_branch(client, project, child["branch"]["id"])
    delete_branch(client, project, parent["branch"]["id"])

    guarded = create_ready_branch(client, project, name=unique("guarded"), protected=True)
    _assert_error(client.delete(f"{base}/{guarded['branch']['id']}"), 400)
    client.patch(f"{base}/{guarded['branch']['id']}", json={"branch": {"protected": False}})
    delete_branch(client, project, guarded["branch"]["id"])


def test_overlapping_mutations_answer_423_until_done(
    server: LocalServerInfo, client: httpx.Client, project: str
) -> None:
    base = f"/projects/{project}/branches"
    assert client.put("/_local/faults", json={"spec": "op_delay=1"}).status_code == 200
    try:
        created = create_branch(client, project, name=unique("slow"))
    finally:
        client.put("/_local/faults", json={"spec": ""})
    branch_id = created["branch"]["id"]
    running = created["operations"][0]["id"]
    body = _assert_error(client.patch(f"{base}/{branch_id}", json={"branch": {"name": unique("x")}}), 423)
    assert running in body["message"] and "retry" in body["message"]
    _assert_error(client.delete(f"{base}/{branch_id}"), 423)
    _assert_error(client.post(base, json={"branch": {"parent_id": branch_id}}), 423)

    wait_operations(client, project, created["operations"])
    ok = client.patch(f"{base}/{branch_id}", json={"branch": {"name": unique("fast")}})
    assert ok.status_code == 200, ok.text
    delete_branch(client, project, branch_id)


def test_create_refused_after_its_copy_began_leaves_nothing(
    server: LocalServerInfo, client: httpx.Client, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy starts before the endpoint's listeners open; when they cannot open, the
    # create is refused and the copy, once done, is dropped: no branch, no database.
    from cathouse_harness.errors import LocalServerError
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.instance_plane import InstanceDataPlane

    copies: list[tuple[str, bool]] = []

    def databases() -> set[str]:  # a branch's copy is its own instance
        return {p.name for base in memory_bases(server.home) for p in (base / "instances").iterdir()}

    existing = databases()

    async def no_listener(self: InstanceDataPlane, endpoint_id: str, **_: Any) -> None:
        # Refuse only once the copy has landed, so its clean-up is what this test sees.
        new: set[str] = set()
        for _attempt in range(600):
            new = databases() - existing
            if new:
                break
            await asyncio.sleep(0.05)
        copies.extend((physical, True) for physical in new)
        copies.extend([] if new else [("", False)])
        raise LocalServerError("cannot listen (test)")

    def exists(physical: str) -> bool:
        return physical in databases()

    base = f"/projects/{project}/branches"
    before = {b["id"] for b in client.get(base).json()["branches"]}
    monkeypatch.setattr(InstanceDataPlane, "open_endpoint", no_listener)
    body = {"branch": {"name": unique("refused")}, "endpoints": [{"type": "read_write"}]}
    answer = client.post(base, json=body)
    monkeypatch.undo()
    _assert_error(answer, 500)
    assert {b["id"] for b in client.get(base).json()["branches"]} == before
    [(physical, landed)] = copies
    assert landed, "the copy had not started before the listeners were asked for"
    deadline = time.monotonic() + 30
    while exists(physical) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not exists(physical)


def test_expired_branch_is_reaped(client: httpx.Client, project: str) -> None:
    created = create_ready_branch(
        client, project, name=unique("ttl"), expires_at=in_future(timedelta(seconds=2))
    )
    branch_id = created["branch"]["id"]
    assert client.get(f"/projects/{project}/branches/{branch_id}").status_code == 200
    deadline = time.monotonic() + 20
    while client.get(f"/projects/{project}/branches/{branch_id}").status_code != 404:
        assert time.monotonic() < deadline, "expired branch was not reaped"
        time.sleep(0.1)
    actions = [
        (op["action"], op["status"])
        for op in client.get(f"/projects/{project}/operations").json()["operations"]
        if op["branch_id"] == branch_id
    ]
    assert ("delete_timeline", "finished") in actions or ("delete_timeline", "running") in actions


# ---------------------------------------------------------------------- restart


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_state_survives_restart(tmp_path: Path, storage: str) -> None:
    """On disk everything survives a restart. In memory the project, its key and names
    do, but a stopped server leaves no cluster behind in /dev/shm (issue 26): its
    branches, whose databases went with it, are forgotten."""
    from cathouse_harness.local.compute.layout import memory_bases

    home = tmp_path / "home"
    table = f"r_{secrets.token_hex(4)}"
    with start_test_server(home, keep_data=True, storage=storage) as info, api_client(info) as client:
        created = create_ready_branch(client, info.project_id, name="survivor", annotation={"k": "v"})
        branch_id = created["branch"]["id"]
        uri = connection_uri(client, info.project_id, branch_id, pooled=False)
        sql(uri, f"CREATE TABLE {table} AS SELECT 42 AS answer")
        first_project = info.project_id
        first_key = info.api_key.reveal()
    if storage == "memory":
        assert not memory_bases(home)
    with start_test_server(home, storage=storage) as info, api_client(info) as client:
        assert info.project_id == first_project
        assert info.api_key.reveal() == first_key
        listing = client.get(f"/projects/{info.project_id}/branches").json()
        if storage == "memory":
            assert branch_id not in {b["id"] for b in listing["branches"]}
            assert [b["name"] for b in listing["branches"]] == ["main"]
            return
        assert branch_id in {b["id"] for b in listing["branches"]}
        assert listing["annotations"][branch_id]["value"] == {"k": "v"}
        got = client.get(f"/projects/{info.project_id}/branches/{branch_id}").json()["branch"]
        assert got["current_state"] == "ready"
        for pooled in (False, True):
            again = connection_uri(client, info.project_id, branch_id, pooled=pooled)
            assert sql(again, f"SELECT answer FROM {table}")[0]["answer"] == 42
