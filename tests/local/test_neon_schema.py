"""Every route of the local server, every answer checked against Neon's reference.

A plain httpx client (not ours) walks every route the local server has, with good and
bad requests, and an event hook checks each answer: the success status the reference
gives the route, the body against the route's object (required fields, types, no
field the reference lacks), errors against Neon's error body. The walk must cover every
route in `cathouse_harness.local.api.app.ROUTES`, and every such route must be one of Neon's.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from cathouse_harness.local.api.app import PREFIX
from cathouse_harness.local.api.app import ROUTES as SERVER_ROUTES
from cathouse_harness.local.server import LocalServerInfo

from tests.local._server import wait_operations
from tests.local.neon_schema import (
    ANNOTATION_MAX_PROPERTIES,
    ROUTES,
    answer_problems,
    route_of,
)


class Recorder:
    """An httpx response hook: which routes were answered, and how answers differ."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        path = response.request.url.path.removeprefix(PREFIX)
        method = response.request.method
        route = route_of(method, path)
        if route is not None:
            self.seen.add(route)
        body = response.json() if response.content else None
        self.problems += answer_problems(method, path, response.status_code, body)



def _server_routes() -> set[tuple[str, str]]:
    found = set()
    for route in SERVER_ROUTES:
        path = route.path.removeprefix(PREFIX)
        if path.startswith("/_local/"):
            continue
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, path))
    return found


def test_every_server_route_is_one_of_neons() -> None:
    assert _server_routes() - set(ROUTES) == set()


def _ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def test_every_answer_conforms_to_the_reference(server: LocalServerInfo) -> None:
    recorder = Recorder()
    client = httpx.Client(
        base_url=server.api_host,
        headers={"Authorization": f"Bearer {server.api_key.reveal()}"},
        event_hooks={"response": [recorder]},
        timeout=60,
    )
    with client:
        _walk(client, server.project_id)
    assert recorder.problems == []
    assert _server_routes() - recorder.seen == set(), "routes the walk did not reach"


def _walk(c: httpx.Client, project: str) -> None:
    p = f"/projects/{project}"
    tag = secrets.token_hex(3)

    # Account, regions, projects.
    for path in ("/auth", "/users/me", "/users/me/organizations", "/regions", p):
        _ok(c.get(path))
    _ok(c.get("/projects", params={"limit": 1}))
    for bad in ("0", "401", "many"):
        assert c.get("/projects", params={"limit": bad}).status_code == 400
        assert c.get("/projects/shared", params={"limit": bad}).status_code == 400
    assert _ok(c.get("/projects/shared")) == {"projects": []}
    keys = c.get("/api_keys")
    [key] = _ok(keys)
    assert key["name"] == "local" and key["created_by"]["id"] == _ok(c.get("/users/me"))["id"]
    assert c.headers["Authorization"].split()[1] not in keys.text  # listed, never revealed
    assert _ok(c.get(f"{p}/permissions")) == {"project_permissions": []}
    # Features a new Neon project has none of, and a local project cannot get.
    assert _ok(c.get(f"{p}/jwks")) == {"jwks": []}
    assert _ok(c.get(f"{p}/vpc_endpoints")) == {"endpoints": []}
    assert _ok(c.get(f"{p}/snapshots")) == {"snapshots": []}
    assert _ok(c.get(f"{p}/available_preload_libraries")) == {"libraries": []}
    renamed_project = _ok(c.patch(p, json={"project": {"name": f"local-{tag}"}}))
    assert renamed_project["project"]["name"] == f"local-{tag}"
    assert _ok(c.get(p))["project"]["name"] == f"local-{tag}"
    for refused in ({}, {"project": {"name": 5}}, {"project": {"history_retention_seconds": -1}},
                    {"project": {"settings": {"allowed_ips": {"ips": ["1.2.3.4"]}}}}):
        assert c.patch(p, json=refused).status_code == 400, refused

    main = next(b for b in _ok(c.get(f"{p}/branches"))["branches"] if b["default"])
    created = _ok(
        c.post(
            f"{p}/branches",
            json={
                "branch": {"name": f"schema-{tag}", "parent_id": main["id"]},
                "endpoints": [{"type": "read_write"}],
                "annotation_value": {"k": "v"},
            },
        ),
        201,
    )
    wait_operations(c, project, created["operations"])
    child = created["branch"]["id"]
    bare = _ok(c.post(f"{p}/branches", json={"branch": {"name": f"bare-{tag}"}}), 201)
    wait_operations(c, project, bare["operations"])
    bare_id = bare["branch"]["id"]

    # Branches: lists and pages, one branch with and one without annotation, count.
    first = _ok(c.get(f"{p}/branches", params={"limit": 1, "sort_order": "asc"}))
    _ok(c.get(f"{p}/branches", params={"cursor": first["pagination"]["next"]}))
    for params in ({"limit": "0"}, {"limit": "10001"}, {"sort_order": "up"}, {"sort_by": "size"}):
        assert c.get(f"{p}/branches", params=params).status_code == 400
    _ok(c.get(f"{p}/branches/{child}"))
    _ok(c.get(f"{p}/branches/{bare_id}"))
    _ok(c.get(f"{p}/branches/count"))
    assert _ok(c.get(f"{p}/branches/{child}/masking_rules")) == {"masking_rules": []}
    assert c.get(f"{p}/branches/br-nothing-here/masking_rules").status_code == 404
    assert _ok(c.get(f"{p}/branches/{child}/backup_schedule")) == {"schedule": []}
    assert c.get(f"{p}/branches/br-nothing-here/backup_schedule").status_code == 404
    _ok(c.patch(f"{p}/branches/{bare_id}", json={"branch": {"name": f"renamed-{tag}"}}))

    # A branch's preview features (storage, functions) answer as Neon does in a region
    # without them, which neonctl's `status` reads as "not here" and goes on.
    for feature in ("buckets", "functions", "credentials"):
        missing = c.get(f"{p}/branches/{child}/{feature}")
        assert missing.status_code == 404 and "not available" in missing.json()["message"]
    assert "not available" not in c.get(f"{p}/branches/{child}/nothing").json()["message"]

    # Refusals the reference describes.
    assert c.get(f"{p}/branches/br-none-none-00000000").status_code == 404
    assert c.delete(f"{p}/branches/br-none-none-00000000").status_code == 204
    assert c.post(f"{p}/branches", json={"endpoints": [{}]}).status_code == 400
    many = {f"k{i}": "v" for i in range(ANNOTATION_MAX_PROPERTIES + 1)}
    assert c.post(f"{p}/branches", json={"annotation_value": many}).status_code == 400
    assert c.post(f"{p}/branches", json={"annotation_value": {"k": 1}}).status_code == 400

    # Endpoints.
    [endpoint] = _ok(c.get(f"{p}/branches/{child}/endpoints"))["endpoints"]
    _ok(c.get(f"{p}/endpoints"))
    _ok(c.get(f"{p}/endpoints/{endpoint['id']}"))
    made = _ok(c.post(f"{p}/endpoints", json={"endpoint": {"branch_id": bare_id, "type": "read_write"}}), 201)
    ep = made["endpoint"]["id"]
    wait_operations(c, project, made["operations"])
    for action in ("suspend", "start", "restart"):
        wait_operations(c, project, _ok(c.post(f"{p}/endpoints/{ep}/{action}"))["operations"])
    patched = _ok(c.patch(f"{p}/endpoints/{ep}", json={"endpoint": {"suspend_timeout_seconds": 300}}))
    wait_operations(c, project, patched["operations"])
    wait_operations(c, project, _ok(c.delete(f"{p}/endpoints/{ep}"))["operations"])
    assert c.delete(f"{p}/endpoints/{ep}").status_code == 204

    # Roles and databases.
    base = f"{p}/branches/{child}"
    _ok(c.get(f"{base}/roles"))
    role = f"r_{tag}"
    wait_operations(
        c, project, _ok(c.post(f"{base}/roles", json={"role": {"name": role}}), 201)["operations"]
    )
    _ok(c.get(f"{base}/roles/{role}"))
    _ok(c.get(f"{base}/roles/{role}/reveal_password"))
    wait_operations(c, project, _ok(c.post(f"{base}/roles/{role}/reset_password"))["operations"])
    _ok(c.get(f"{base}/databases"))
    db = f"d_{tag}"
    body = {"database": {"name": db, "owner_name": role}}
    wait_operations(c, project, _ok(c.post(f"{base}/databases", json=body), 201)["operations"])
    _ok(c.get(f"{base}/databases/{db}"))
    renamed = _ok(c.patch(f"{base}/databases/{db}", json={"database": {"name": f"{db}_2"}}))
    wait_operations(c, project, renamed["operations"])
    wait_operations(c, project, _ok(c.delete(f"{base}/databases/{db}_2"))["operations"])
    assert c.delete(f"{base}/databases/{db}_2").status_code == 204
    wait_operations(c, project, _ok(c.delete(f"{base}/roles/{role}"))["operations"])
    assert c.delete(f"{base}/roles/{role}").status_code == 204

    # Schema, restore, default, operations, connection URI.
    _ok(c.get(f"{base}/schema", params={"db_name": "cathouse"}))
    _ok(c.get(f"{base}/compare_schema", params={"base_branch_id": main["id"], "db_name": "cathouse"}))
    restored = _ok(c.post(f"{base}/restore", json={"source_branch_id": main["id"]}))
    wait_operations(c, project, restored["operations"])
    _walk_snapshots(c, project, bare_id, tag)
    wait_operations(c, project, _ok(c.post(f"{p}/branches/{bare_id}/set_as_default"))["operations"])
    wait_operations(c, project, _ok(c.post(f"{p}/branches/{main['id']}/set_as_default"))["operations"])
    ops = _ok(c.get(f"{p}/operations", params={"limit": 2}))
    _ok(c.get(f"{p}/operations", params={"cursor": ops["pagination"]["cursor"]}))
    assert c.get(f"{p}/operations", params={"limit": "1001"}).status_code == 400
    _ok(c.get(f"{p}/operations/{ops['operations'][0]['id']}"))
    _ok(
        c.get(
            f"{p}/connection_uri",
            params={"branch_id": child, "database_name": "cathouse", "role_name": "cathouse_owner"},
        )
    )
    for branch_id in (child, bare_id):
        wait_operations(c, project, _ok(c.delete(f"{p}/branches/{branch_id}"))["operations"])


def _walk_snapshots(c: httpx.Client, project: str, branch_id: str, tag: str) -> None:
    """Take, list, rename, restore into a new branch, finalize, delete."""
    p = f"/projects/{project}"
    snap = _ok(c.post(f"{p}/branches/{branch_id}/snapshot", params={"name": f"snap-{tag}"}))
    wait_operations(c, project, snap["operations"])
    sid = snap["snapshot"]["id"]
    assert [s["id"] for s in _ok(c.get(f"{p}/snapshots"))["snapshots"]] == [sid]
    _ok(c.patch(f"{p}/snapshots/{sid}", json={"snapshot": {"name": f"snap2-{tag}"}}))
    from_snap = _ok(c.post(f"{p}/snapshots/{sid}/restore", json={"name": f"from-{tag}"}))
    wait_operations(c, project, from_snap["operations"])
    _ok(c.post(f"{p}/branches/{from_snap['branch']['id']}/finalize_restore", json={}))
    wait_operations(c, project, _ok(c.delete(f"{p}/snapshots/{sid}"), 202)["operations"])
