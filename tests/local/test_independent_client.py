"""A Neon API v2 client we did not write, pointed at the local server.

Written from Neon's public API reference with nothing but the standard library
(`urllib.request`, `json`): none of our client code, none of our HTTP helpers. It reads
the API host, key and project the way Neon's tools do (NEON_API_HOST, NEON_API_KEY,
NEON_PROJECT_ID), lists, creates, inspects, connects to (pooled and direct, with
asyncpg) and deletes branches.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any

import asyncpg
import pytest
from cathouse_harness.local.server import LocalServerInfo


class PlainNeon:
    """The smallest Neon v2 client: one method per documented call."""

    def __init__(self, env: dict[str, str]) -> None:
        self.host = env["NEON_API_HOST"].rstrip("/")
        self.key = env["NEON_API_KEY"]
        self.project = env["NEON_PROJECT_ID"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.host + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.call(method, path, body)
        assert 200 <= status < 300, (status, payload)
        return payload

    def wait(self, operations: list[dict[str, Any]]) -> None:
        """Neon's guidance: poll each operation until it is no longer scheduling/running."""
        deadline = time.monotonic() + 60
        for op in operations:
            while True:
                status = self.ok("GET", f"/projects/{self.project}/operations/{op['id']}")["operation"][
                    "status"
                ]
                if status not in ("scheduling", "running"):
                    assert status == "finished", status
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)



@pytest.fixture
def neon(server: LocalServerInfo) -> PlainNeon:
    # What `cathouse-branch emulator` prints, and what Neon's own tools read.
    return PlainNeon(
        {
            "NEON_API_HOST": server.api_host,
            "NEON_API_KEY": server.api_key.reveal(),
            "NEON_PROJECT_ID": server.project_id,
        }
    )


async def _roundtrip(uri: str, marker: str) -> tuple[str, list[str]]:
    conn = await asyncpg.connect(uri, statement_cache_size=0)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS marks (v text)")
        await conn.execute("INSERT INTO marks VALUES ($1)", marker)
        rows = await conn.fetch("SELECT v FROM marks ORDER BY v")
        return str(await conn.fetchval("SELECT current_user")), [r["v"] for r in rows]
    finally:
        await conn.close()


def test_plain_client_branch_round_trip(neon: PlainNeon) -> None:
    project = neon.project
    assert neon.ok("GET", "/auth") is not None
    listed = neon.ok("GET", f"/projects/{project}/branches")
    default = next(b for b in listed["branches"] if b["default"])

    name = f"plain-{secrets.token_hex(3)}"
    created = neon.ok(
        "POST",
        f"/projects/{project}/branches",
        {
            "branch": {"name": name, "parent_id": default["id"]},
            "endpoints": [{"type": "read_write"}],
        },
    )
    branch, endpoint = created["branch"], created["endpoints"][0]
    neon.wait(created["operations"])

    # Resolve the name through the list, as Neon clients do.
    listed = neon.ok("GET", f"/projects/{project}/branches")
    assert [b["id"] for b in listed["branches"] if b["name"] == name] == [branch["id"]]
    assert isinstance(listed["annotations"], dict)
    inspected = neon.ok("GET", f"/projects/{project}/branches/{branch['id']}")["branch"]
    assert inspected["current_state"] == "ready"
    endpoints = neon.ok("GET", f"/projects/{project}/branches/{branch['id']}/endpoints")
    assert [e["id"] for e in endpoints["endpoints"]] == [endpoint["id"]]
    assert endpoint["type"] == "read_write" and endpoint["host"]

    query = (
        f"/projects/{project}/connection_uri?branch_id={branch['id']}"
        f"&endpoint_id={endpoint['id']}&database_name=cathouse&role_name=cathouse_owner"
    )
    direct = neon.ok("GET", query)["uri"]
    pooled = neon.ok("GET", query + "&pooled=true")["uri"]
    assert direct == created["connection_uris"][0]["connection_uri"]
    assert pooled != direct
    password = neon.ok(
        "GET", f"/projects/{project}/branches/{branch['id']}/roles/cathouse_owner/reveal_password"
    )["password"]
    assert password == created["connection_uris"][0]["connection_parameters"]["password"]

    user, rows = asyncio.run(_roundtrip(direct, "direct"))
    assert user == "cathouse_owner" and rows == ["direct"]
    user, rows = asyncio.run(_roundtrip(pooled, "pooled"))
    assert user == "cathouse_owner" and rows == ["direct", "pooled"]

    deleted = neon.ok("DELETE", f"/projects/{project}/branches/{branch['id']}")
    neon.wait(deleted["operations"])
    status, error = neon.call("GET", f"/projects/{project}/branches/{branch['id']}")
    assert status == 404 and error["message"]


def test_plain_client_sees_errors_in_neon_shape(neon: PlainNeon) -> None:
    stranger = PlainNeon(
        {"NEON_API_HOST": neon.host, "NEON_API_KEY": "napi_wrong", "NEON_PROJECT_ID": neon.project}
    )
    status, body = stranger.call("GET", f"/projects/{neon.project}/branches")
    assert status == 401 and set(body) == {"code", "message", "request_id"}
    status, body = neon.call("GET", "/projects/not-a-project")
    assert status == 404 and body["request_id"]
