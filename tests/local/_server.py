"""Running the local Neon server in-process for tests, and small HTTP helpers.

`start_test_server(home)` runs the real server (real DataPlane, real PostgreSQL) on a
background thread with its own event loop and yields its `LocalServerInfo`; leaving the
context stops it and, unless `keep_data`, removes the cluster's data directory.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cathouse_harness.local.api.app import PREFIX
from cathouse_harness.local.server import LocalServerInfo, ServerHandle, serve
from cathouse_harness.local.sim.faults import parse_faults
from cathouse_harness.local.sim.latency import parse_latency

from tests.local.neon_schema import answer_problems

START_TIMEOUT = 90.0
FINAL = ("finished", "failed", "error", "cancelled", "skipped")


def unknown_login_sqlstate(shared: str) -> str:
    """What a login naming a role or database the branch lacks gets: a branch's own
    instance answers as for a wrong password."""
    return "28P01"


@contextmanager
def start_test_server(
    home: Path,
    *,
    faults: str | None = None,
    latency: str | None = None,
    storage: str = "memory",
    keep_data: bool = False,
    branches_limit: int | None = None,
    database: str | None = "cathouse",
    role: str | None = "cathouse_owner",
) -> Iterator[LocalServerInfo]:
    """`database` / `role`: a new project's names, the harness's defaults unless a
    test asks for others (None: the server's own, `neondb` / `neondb_owner`)."""
    handle = ServerHandle()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                serve(
                    home,
                    storage=storage,
                    faults=parse_faults(faults),
                    latency=parse_latency(latency),
                    ready=lambda _info: ready.set(),
                    handle=handle,
                    branches_limit=branches_limit,
                    database=database,
                    role=role,
                )
            )
        except BaseException as exc:  # reported to the waiting test thread
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="local-neon-test-server", daemon=True)
    thread.start()
    ready.wait(START_TIMEOUT)
    if failure:
        raise failure[0]
    if handle.info is None:
        handle.stop()
        raise RuntimeError("the local Neon server did not start in time")
    try:
        yield handle.info
    finally:
        handle.stop()
        thread.join(60)
        cluster = getattr(handle.neon.dataplane, "cluster_dir", None) if handle.neon else None
        if not keep_data and cluster is not None:
            shutil.rmtree(cluster, ignore_errors=True)
            # the instance data plane's per-home OS user (made when run as root)
            forget_user = getattr(handle.neon.dataplane, "remove_home_user", None) if handle.neon else None
            if forget_user is not None:
                forget_user()
        if failure:
            raise failure[0]


def conforms(response: httpx.Response) -> None:
    """An httpx response hook: fail on any answer that is not as Neon's reference has it."""
    path = response.request.url.path.removeprefix(PREFIX)
    if path.startswith("/_local/"):
        return
    response.read()
    body = response.json() if response.content else None
    found = answer_problems(response.request.method, path, response.status_code, body)
    assert not found, "\n".join(found)


def api_client(info: LocalServerInfo, *, key: str | None = None) -> httpx.Client:
    """A plain httpx client on the local server; every answer is checked against
    Neon's reference (`conforms`)."""
    token = info.api_key.reveal() if key is None else key
    return httpx.Client(
        base_url=info.api_host,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        event_hooks={"response": [conforms]},
    )


def wait_operations(
    client: httpx.Client, project: str, ops: list[dict[str, Any]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Poll each operation until it reaches a final status; return the final objects."""
    deadline = time.monotonic() + timeout
    done: list[dict[str, Any]] = []
    for op in ops:
        while True:
            current = client.get(f"/projects/{project}/operations/{op['id']}")
            current.raise_for_status()
            body = current.json()["operation"]
            if body["status"] in FINAL:
                done.append(body)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"operation {op['id']} still {body['status']}")
            time.sleep(0.02)
    return done


def default_branch(client: httpx.Client, project: str) -> dict[str, Any]:
    """The project's default branch, found as Neon clients find it (`default: true`)."""
    branches = client.get(f"/projects/{project}/branches").json()["branches"]
    return next(b for b in branches if b["default"])


def instance_per_branch() -> bool:
    """Whether the servers these tests start keep each branch's WAL since its base: a
    PostgreSQL per branch always does."""
    return True


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def in_future(delta: timedelta) -> str:
    """An RFC 3339 timestamp `delta` from now, to the second (as `expires_at` takes it)."""
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_branch(client: httpx.Client, project: str, **branch: Any) -> dict[str, Any]:
    annotation = branch.pop("annotation", None)
    body: dict[str, Any] = {"branch": branch, "endpoints": [{"type": "read_write"}]}
    if annotation is not None:
        body["annotation_value"] = annotation
    answer = client.post(f"/projects/{project}/branches", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def create_ready_branch(client: httpx.Client, project: str, **branch: Any) -> dict[str, Any]:
    created = create_branch(client, project, **branch)
    finals = wait_operations(client, project, created["operations"])
    assert [op["status"] for op in finals] == ["finished"] * len(finals)
    return created


def delete_branch(client: httpx.Client, project: str, branch_id: str) -> None:
    answer = client.delete(f"/projects/{project}/branches/{branch_id}")
    assert answer.status_code == 200, answer.text
    wait_operations(client, project, answer.json()["operations"])


def connection_uri(client: httpx.Client, project: str, branch_id: str, *, pooled: bool) -> str:
    answer = client.get(
        f"/projects/{project}/connection_uri",
        params={
            "branch_id": branch_id,
            "database_name": "cathouse",
            "role_name": "cathouse_owner",
            "pooled": "true" if pooled else "false",
        },
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["uri"])


async def _fetch(uri: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    # statement_cache_size=0: pooled URLs go through PgBouncer in transaction mode.
    conn = await asyncpg.connect(uri, statement_cache_size=0)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def sql(uri: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (its own event loop) and return the rows."""
    return asyncio.run(_fetch(uri, statement, *args))
