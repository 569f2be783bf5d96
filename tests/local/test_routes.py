"""The routes Neon's CLI, GitHub actions and SDKs call beyond branch create/delete, with
a plain httpx client against the real local server and real PostgreSQL: branch count
and default, schema and schema diff, endpoints, roles, databases, regions and
organizations."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    default_branch,
    delete_branch,
    sql,
    start_test_server,
    unknown_login_sqlstate,
    wait_operations,
)


@pytest.fixture
def p(project: str) -> str:
    return f"/projects/{project}"


def _done(client: httpx.Client, p: str, answer: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The answer's body once its operations finished."""
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    finals = wait_operations(client, p.removeprefix("/projects/"), body.get("operations", []))
    assert all(op["status"] == "finished" for op in finals), finals
    return body


def _uri(
    client: httpx.Client,
    p: str,
    branch_id: str,
    *,
    database: str = "cathouse",
    role: str = "cathouse_owner",
    endpoint_id: str | None = None,
) -> str:
    params = {"branch_id": branch_id, "database_name": database, "role_name": role}
    if endpoint_id:
        params["endpoint_id"] = endpoint_id
    answer = client.get(f"{p}/connection_uri", params=params)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["uri"])


def _refused(uri: str, sqlstate: str | None = None) -> str:
    with pytest.raises((OSError, asyncpg.PostgresError)) as caught:
        sql(uri, "SELECT 1")
    if sqlstate is not None:
        assert getattr(caught.value, "sqlstate", None) == sqlstate, caught.value
    return str(caught.value)


# ---------------------------------------------------------------------- account


def test_regions_and_organizations(client: httpx.Client) -> None:
    [region] = client.get("/regions").json()["regions"]
    assert region["default"] is True and region["region_id"] == "local"
    assert client.get("/users/me/organizations").json() == {"organizations": []}


# ---------------------------------------------------------------------- branches


def test_count_is_a_route_of_its_own(client: httpx.Client, p: str, project: str) -> None:
    tag = secrets.token_hex(3)
    made = create_ready_branch(client, project, name=f"count-{tag}")
    listed = client.get(f"{p}/branches").json()["branches"]
    assert client.get(f"{p}/branches/count").json() == {"count": len(listed)}
    assert client.get(f"{p}/branches/count", params={"search": tag}).json() == {"count": 1}
    delete_branch(client, project, made["branch"]["id"])


def test_set_as_default_moves_the_default(client: httpx.Client, p: str, project: str) -> None:
    main = default_branch(client, project)
    child = create_ready_branch(client, project, name=f"next-default-{secrets.token_hex(3)}")["branch"]
    body = _done(client, p, client.post(f"{p}/branches/{child['id']}/set_as_default"))
    assert body["branch"]["default"] is True
    assert default_branch(client, project)["id"] == child["id"]
    assert client.get(f"{p}/branches/{main['id']}").json()["branch"]["default"] is False
    # A branch made now forks from the new default.
    grandchild = create_ready_branch(client, project, name=f"g-{secrets.token_hex(3)}")["branch"]
    assert grandchild["parent_id"] == child["id"]
    delete_branch(client, project, grandchild["id"])
    # main is no longer the default, but still a root branch: it stays.
    assert client.delete(f"{p}/branches/{main['id']}").status_code == 400
    _done(client, p, client.post(f"{p}/branches/{main['id']}/set_as_default"))
    delete_branch(client, project, child["id"])


def test_schema_and_schema_comparison(client: httpx.Client, p: str, project: str) -> None:
    main = default_branch(client, project)
    table = f"s_{secrets.token_hex(3)}"
    sql(_uri(client, p, main["id"]), f"CREATE TABLE {table} (id int PRIMARY KEY)")
    child = create_ready_branch(client, project, name=f"schema-{secrets.token_hex(3)}")["branch"]
    sql(_uri(client, p, child["id"]), f"ALTER TABLE {table} ADD COLUMN note text")
    base = f"{p}/branches/{child['id']}"

    dump = client.get(f"{base}/schema", params={"db_name": "cathouse"}).json()["sql"]
    assert f"CREATE TABLE public.{table}" in dump and "note text" in dump
    assert "\\restrict" not in dump
    tables = client.get(f"{base}/schema", params={"db_name": "cathouse", "format": "json"}).json()
    [mine] = [t for t in tables["json"]["tables"] if t["name"] == table]
    assert [c["name"] for c in mine["columns"]] == ["id", "note"]

    diff = client.get(f"{base}/compare_schema", params={"db_name": "cathouse"}).json()["diff"]
    assert f"--- {main['id']}/cathouse" in diff and f"+++ {child['id']}/cathouse" in diff
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-    id integer NOT NULL", "+    id integer NOT NULL,", "+    note text"]
    same = client.get(
        f"{base}/compare_schema", params={"db_name": "cathouse", "base_branch_id": child["id"]}
    ).json()
    assert same == {"diff": ""}
    assert client.get(f"{base}/schema").status_code == 400  # db_name is required
    assert client.get(f"{base}/schema", params={"db_name": "cathouse", "lsn": "0/1"}).status_code == 400
    assert client.get(f"{base}/schema", params={"db_name": "nope"}).status_code == 404
    delete_branch(client, project, child["id"])
    sql(_uri(client, p, main["id"]), f"DROP TABLE {table}")


# ---------------------------------------------------------------------- endpoints


def test_endpoint_create_suspend_restart_disable_delete(client: httpx.Client, p: str, project: str) -> None:
    answer = client.post(f"{p}/branches", json={"branch": {"name": f"ep-{secrets.token_hex(3)}"}})
    branch = _done(client, p, answer, 201)["branch"]
    assert client.get(f"{p}/branches/{branch['id']}/endpoints").json()["endpoints"] == []
    assert client.post(f"{p}/endpoints", json={"endpoint": {"branch_id": branch["id"]}}).status_code == 400

    made = _done(
        client,
        p,
        client.post(f"{p}/endpoints", json={"endpoint": {"branch_id": branch["id"], "type": "read_write"}}),
        201,
    )
    ep = made["endpoint"]
    assert [op["action"] for op in made["operations"]] == ["start_compute"]
    uri = _uri(client, p, branch["id"])
    assert sql(uri, "SELECT current_database() AS db")[0]["db"]
    again = client.post(
        f"{p}/endpoints", json={"endpoint": {"branch_id": branch["id"], "type": "read_write"}}
    )
    assert again.status_code == 409

    reader = _done(
        client,
        p,
        client.post(f"{p}/endpoints", json={"endpoint": {"branch_id": branch["id"], "type": "read_only"}}),
        201,
    )["endpoint"]
    read_uri = _uri(client, p, branch["id"], endpoint_id=reader["id"])
    assert sql(read_uri, "SELECT 1 AS one")[0]["one"] == 1
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        sql(read_uri, "CREATE TABLE nope (id int)")

    suspended = _done(client, p, client.post(f"{p}/endpoints/{ep['id']}/suspend"))
    assert [op["action"] for op in suspended["operations"]] == ["suspend_compute"]
    assert client.get(f"{p}/endpoints/{ep['id']}").json()["endpoint"]["current_state"] == "idle"
    sql(uri, "SELECT 1")  # a suspended compute wakes on a connection
    assert client.get(f"{p}/endpoints/{ep['id']}").json()["endpoint"]["current_state"] == "active"
    restarted = _done(client, p, client.post(f"{p}/endpoints/{ep['id']}/restart"))
    assert [op["action"] for op in restarted["operations"]] == ["suspend_compute", "start_compute"]
    _done(client, p, client.post(f"{p}/endpoints/{ep['id']}/start"))

    body = {"endpoint": {"disabled": True, "suspend_timeout_seconds": 300}}
    disabled = _done(client, p, client.patch(f"{p}/endpoints/{ep['id']}", json=body))["endpoint"]
    assert disabled["disabled"] is True and disabled["suspend_timeout_seconds"] == 300
    assert "disabled" in _refused(uri)
    assert client.post(f"{p}/endpoints/{ep['id']}/start").status_code == 400
    _done(client, p, client.patch(f"{p}/endpoints/{ep['id']}", json={"endpoint": {"disabled": False}}))
    sql(uri, "SELECT 1")
    assert (
        client.patch(f"{p}/endpoints/{ep['id']}", json={"endpoint": {"type": "read_only"}}).status_code == 400
    )

    for endpoint in (ep, reader):
        _done(client, p, client.delete(f"{p}/endpoints/{endpoint['id']}"))
        assert client.get(f"{p}/endpoints/{endpoint['id']}").status_code == 404
        assert client.delete(f"{p}/endpoints/{endpoint['id']}").status_code == 204
    _refused(uri)
    delete_branch(client, project, branch["id"])


def test_protected_branch_keeps_its_endpoint(client: httpx.Client, p: str, project: str) -> None:
    branch = create_ready_branch(client, project, name=f"guard-{secrets.token_hex(3)}", protected=True)
    [ep] = branch["endpoints"]
    assert client.delete(f"{p}/endpoints/{ep['id']}").status_code == 400
    client.patch(f"{p}/branches/{branch['branch']['id']}", json={"branch": {"protected": False}})
    delete_branch(client, project, branch["branch"]["id"])


# ---------------------------------------------------------------------- roles


def test_role_create_connect_reset_delete(client: httpx.Client, p: str, project: str) -> None:
    branch = create_ready_branch(client, project, name=f"roles-{secrets.token_hex(3)}")["branch"]
    sibling = create_ready_branch(client, project, name=f"sibling-{secrets.token_hex(3)}")["branch"]
    base = f"{p}/branches/{branch['id']}"
    role = f"r_{secrets.token_hex(3)}"

    made = _done(client, p, client.post(f"{base}/roles", json={"role": {"name": role}}), 201)
    first = made["role"]["password"]
    assert [op["action"] for op in made["operations"]] == ["apply_config"]
    assert client.post(f"{base}/roles", json={"role": {"name": role}}).status_code == 409
    assert client.post(f"{base}/roles", json={"role": {"name": "x" * 64}}).status_code == 400
    assert client.get(f"{base}/roles/{role}/reveal_password").json() == {"password": first}
    uri = _uri(client, p, branch["id"], role=role)
    assert sql(uri, "SELECT current_user AS u")[0]["u"] == role
    # Roles belong to a branch: the sibling has no such role, and its endpoint says so.
    sibling_uri = _uri(client, p, sibling["id"]).replace("cathouse_owner", role, 1)
    _refused(sibling_uri, unknown_login_sqlstate("28000"))

    reset = _done(client, p, client.post(f"{base}/roles/{role}/reset_password"))
    second = reset["role"]["password"]
    assert second != first and client.get(f"{base}/roles/{role}/reveal_password").json()["password"] == second
    _refused(uri, "28P01")
    assert sql(_uri(client, p, branch["id"], role=role), "SELECT 1 AS one")[0]["one"] == 1

    body = {"database": {"name": f"owned_{secrets.token_hex(3)}", "owner_name": role}}
    db = _done(client, p, client.post(f"{base}/databases", json=body), 201)["database"]
    assert client.delete(f"{base}/roles/{role}").status_code == 422  # it owns a database
    _done(client, p, client.delete(f"{base}/databases/{db['name']}"))
    _done(client, p, client.delete(f"{base}/roles/{role}"))
    assert client.get(f"{base}/roles/{role}").status_code == 404
    assert client.delete(f"{base}/roles/{role}").status_code == 204
    _refused(uri, unknown_login_sqlstate("28000"))
    for branch_id in (branch["id"], sibling["id"]):
        delete_branch(client, project, branch_id)


# ---------------------------------------------------------------------- databases


def test_database_create_fork_rename_delete(client: httpx.Client, p: str, project: str) -> None:
    branch = create_ready_branch(client, project, name=f"dbs-{secrets.token_hex(3)}")["branch"]
    base = f"{p}/branches/{branch['id']}"
    name = f"d_{secrets.token_hex(3)}"
    body = {"database": {"name": name, "owner_name": "cathouse_owner"}}
    made = _done(client, p, client.post(f"{base}/databases", json=body), 201)["database"]
    assert (made["name"], made["owner_name"]) == (name, "cathouse_owner")
    assert client.post(f"{base}/databases", json=body).status_code == 409
    missing_owner = {"database": {"name": f"x_{secrets.token_hex(3)}", "owner_name": "nobody"}}
    assert client.post(f"{base}/databases", json=missing_owner).status_code == 404

    uri = _uri(client, p, branch["id"], database=name)
    sql(uri, "CREATE TABLE kept AS SELECT 7 AS v")
    child = create_ready_branch(
        client, project, name=f"dbs-child-{secrets.token_hex(3)}", parent_id=branch["id"]
    )["branch"]
    assert sql(_uri(client, p, child["id"], database=name), "SELECT v FROM kept")[0]["v"] == 7

    renamed = f"{name}_new"
    other = f"o_{secrets.token_hex(3)}"
    _done(client, p, client.post(f"{base}/roles", json={"role": {"name": other}}), 201)
    update = {"database": {"name": renamed, "owner_name": other}}
    after = _done(client, p, client.patch(f"{base}/databases/{name}", json=update))["database"]
    assert (after["name"], after["owner_name"]) == (renamed, other)
    assert client.get(f"{base}/databases/{name}").status_code == 404
    new_uri = _uri(client, p, branch["id"], database=renamed)
    assert sql(new_uri, "SELECT v FROM kept")[0]["v"] == 7
    owner = sql(
        new_uri, "SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = current_database()"
    )
    assert owner[0]["o"] == other
    _refused(uri, unknown_login_sqlstate("3D000"))

    _done(client, p, client.delete(f"{base}/databases/{renamed}"))
    assert client.delete(f"{base}/databases/{renamed}").status_code == 204
    _refused(new_uri, unknown_login_sqlstate("3D000"))
    delete_branch(client, project, child["id"])
    delete_branch(client, project, branch["id"])


def test_a_new_project_has_exactly_the_names_it_was_made_with(tmp_path: Path) -> None:
    """As Neon's create-project: one role and one database it owns, the ones asked for,
    else `neondb` / `neondb_owner`; so a client naming neither (neonctl's
    `connection-string`, `psql`) finds the one pair there is. A database made through
    the API is a record until first used, then copied to children like any other."""
    for asked, expected in ((None, ("neondb", "neondb_owner")), ("shop", ("shop", "shop_owner"))):
        home = tmp_path / (asked or "unnamed")
        names = {"database": asked, "role": f"{asked}_owner" if asked else None}
        with start_test_server(home, **names) as info, api_client(info) as client:
            project = info.project_id
            p = f"/projects/{project}"
            main = default_branch(client, project)
            listed = client.get(f"{p}/branches/{main['id']}/databases").json()["databases"]
            assert [(d["name"], d["owner_name"]) for d in listed] == [expected]
            roles = client.get(f"{p}/branches/{main['id']}/roles").json()["roles"]
            assert [r["name"] for r in roles] == [expected[1]]
            branch = create_ready_branch(client, project, name="names")
            [conn] = branch["connection_uris"]
            params = conn["connection_parameters"]
            assert (params["database"], params["role"]) == expected
            assert sql(conn["connection_uri"], "SELECT current_user AS u")[0]["u"] == expected[1]
    # the home keeps its project: started again with other names, it is unchanged
    again = start_test_server(tmp_path / "shop", database="other", role="other_owner")
    with again as info, api_client(info) as client:
        main = default_branch(client, info.project_id)
        listed = client.get(f"/projects/{info.project_id}/branches/{main['id']}/databases")
        assert [d["name"] for d in listed.json()["databases"]] == ["shop"]


def test_connection_uri_checks_the_catalog(client: httpx.Client, p: str, project: str) -> None:
    main = default_branch(client, project)
    params = {"branch_id": main["id"], "database_name": "cathouse", "role_name": "nobody"}
    assert client.get(f"{p}/connection_uri", params=params).status_code == 404
    assert connection_uri(client, project, main["id"], pooled=True) != _uri(client, p, main["id"])


# ---------------------------------------------------------------------- lists


def _pages(client: httpx.Client, path: str, key: str, cursor_of: Any, **params: Any) -> list[list[str]]:
    pages = []
    answer = client.get(path, params=params).json()
    while answer[key]:
        pages.append([item["id"] for item in answer[key]])
        cursor = cursor_of(answer)
        if cursor is None:
            break
        answer = client.get(path, params={"cursor": cursor}).json()
    return pages


def test_lists_page_with_cursors_that_work(client: httpx.Client, p: str, project: str) -> None:
    tag = secrets.token_hex(3)
    made = [create_ready_branch(client, project, name=f"page-{tag}-{i}")["branch"]["id"] for i in range(3)]
    everything = [
        b["id"]
        for b in client.get(f"{p}/branches", params={"sort_by": "name", "sort_order": "asc"}).json()[
            "branches"
        ]
    ]
    pages = _pages(
        client,
        f"{p}/branches",
        "branches",
        lambda a: a["pagination"].get("next"),
        limit=2,
        sort_by="name",
        sort_order="asc",
    )
    assert all(len(page) <= 2 for page in pages) and sum(pages, []) == everything
    names = [
        b["name"]
        for b in client.get(f"{p}/branches", params={"sort_by": "name", "sort_order": "asc"}).json()[
            "branches"
        ]
    ]
    assert names == sorted(names)

    all_ops = [op["id"] for op in client.get(f"{p}/operations").json()["operations"]]
    op_pages = _pages(
        client, f"{p}/operations", "operations", lambda a: a.get("pagination", {}).get("cursor"), limit=5
    )
    assert sum(op_pages, []) == all_ops and all(len(page) <= 5 for page in op_pages)
    assert client.get(f"{p}/operations", params={"cursor": "bm90LWEtY3Vyc29y"}).status_code == 400
    for branch_id in made:
        delete_branch(client, project, branch_id)
