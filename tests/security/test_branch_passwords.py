"""Item 3, second half (and #15's rule for protected parents): a branch's role password
opens that branch only.

PostgreSQL roles are cluster-wide, so one password used to open every branch of a home,
and PostgreSQL's and PgBouncer's own loopback ports too. Now each branch has its own
passwords, the endpoint proxy checks them (SCRAM, with channel binding to its
certificate when the client asks), and logs in upstream with an internal password
nobody is handed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import httpx
import psycopg
import pytest
from cathouse_harness.local.server import LocalServerInfo

from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    delete_branch,
    start_test_server,
    wait_operations,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("passwords-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[LocalServerInfo]:
    with start_test_server(home) as info:
        yield info


@pytest.fixture
def client(server: LocalServerInfo) -> Iterator[httpx.Client]:
    with api_client(server) as c:
        yield c


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{parts.username}:{quote(password, safe='')}@{parts.hostname}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _password(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return password


def _opens(url: str, **kwargs: Any) -> bool:
    """Whether `url` logs in; False when the password is refused (anything else raises)."""

    async def connect() -> bool:
        try:
            conn = await asyncpg.connect(url, statement_cache_size=0, timeout=10, **kwargs)
        except asyncpg.InvalidPasswordError:
            return False
        except asyncpg.ProtocolViolationError as exc:  # PgBouncer's way of saying it
            if "SASL authentication failed" in str(exc):
                return False
            raise
        await conn.fetchval("SELECT 1")
        await conn.close()
        return True

    return asyncio.run(connect())


def _urls(client: httpx.Client, project: str, made: dict[str, Any]) -> dict[str, str]:
    branch_id = made["branch"]["id"]
    return {
        "direct": connection_uri(client, project, branch_id, pooled=False),
        "pooled": connection_uri(client, project, branch_id, pooled=True),
    }


@pytest.mark.parametrize("kind", ["direct", "pooled"])
def test_a_branchs_password_is_refused_on_another_branchs_endpoint(
    client: httpx.Client, server: LocalServerInfo, kind: str
) -> None:
    project = server.project_id
    a = create_ready_branch(client, project, name=f"a-{kind}")
    b = create_ready_branch(client, project, name=f"b-{kind}")
    url_a, url_b = _urls(client, project, a)[kind], _urls(client, project, b)[kind]
    assert _opens(url_a) and _opens(url_b)
    assert not _opens(_with_password(url_b, _password(url_a)))
    assert not _opens(_with_password(url_a, _password(url_b)))
    for made in (a, b):
        delete_branch(client, project, made["branch"]["id"])


def _main_id(client: httpx.Client, server: LocalServerInfo) -> str:
    branches = client.get(f"/projects/{server.project_id}/branches").json()["branches"]
    return str(next(b["id"] for b in branches if b["default"]))


def test_children_of_a_protected_branch_get_new_passwords(
    client: httpx.Client, server: LocalServerInfo
) -> None:
    project = server.project_id
    guarded = create_ready_branch(client, project, name="guarded", protected=True)
    child = create_ready_branch(client, project, name="guarded-child", parent_id=guarded["branch"]["id"])

    def answered(made: dict[str, Any]) -> str:
        return str(next(r["password"] for r in made["roles"] if r["name"] == "cathouse_owner"))

    assert answered(child) != answered(guarded)
    child_url = _urls(client, project, child)["direct"]
    assert _password(child_url) == quote(answered(child), safe="")
    assert _opens(child_url)
    assert not _opens(_with_password(child_url, answered(guarded)))
    delete_branch(client, project, child["branch"]["id"])
    unprotect = {"branch": {"protected": False}}
    client.patch(f"/projects/{project}/branches/{guarded['branch']['id']}", json=unprotect)
    delete_branch(client, project, guarded["branch"]["id"])


def test_reset_password_changes_one_branch_only(client: httpx.Client, server: LocalServerInfo) -> None:
    project = server.project_id
    a = create_ready_branch(client, project, name="reset-a")
    b = create_ready_branch(client, project, name="reset-b")
    url_a, old_b = _urls(client, project, a)["direct"], _urls(client, project, b)["direct"]
    base = f"/projects/{project}/branches/{b['branch']['id']}"
    reset = client.post(f"{base}/roles/cathouse_owner/reset_password")
    wait_operations(client, project, reset.json()["operations"])
    new_b = _with_password(old_b, reset.json()["role"]["password"])
    assert _opens(new_b) and not _opens(old_b) and _opens(url_a)
    for made in (a, b):
        delete_branch(client, project, made["branch"]["id"])


def test_channel_binding_require_connects(client: httpx.Client, server: LocalServerInfo) -> None:
    """Neon's URLs often say channel_binding=require: libpq then insists on
    SCRAM-SHA-256-PLUS, bound to the certificate of the TLS it speaks (the proxy's)."""
    url = connection_uri(client, server.project_id, _main_id(client, server), pooled=False)
    with psycopg.connect(url + "&channel_binding=require", connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_home_from_before_keeps_its_urls_and_closes_the_door_they_opened(tmp_path: Path) -> None:
    """A state written when one password per role served every branch: its URLs keep
    working through the endpoints (nothing else listens: test_branch_instances)."""
    from cathouse_harness.local.control.state import STATE_FILE

    home = tmp_path / "legacy-home"
    home.mkdir(mode=0o700)
    with start_test_server(home, keep_data=True):
        pass
    path = home / STATE_FILE
    state = json.loads(path.read_text())
    for branch in state["branches"].values():
        for role in branch["roles"].values():
            role.pop("password", None)
    shared = "legacy-shared-password-0123"  # what such a state kept, one per role
    state["passwords"] = {"cathouse_owner": shared}
    path.write_text(json.dumps(state))
    with start_test_server(home) as info, api_client(info) as client:
        url = connection_uri(client, info.project_id, _main_id(client, info), pooled=False)
        assert _password(url) == shared and _opens(url)


def test_a_restored_branch_keeps_its_password_and_its_preserved_copy_gets_its_own(
    client: httpx.Client, server: LocalServerInfo
) -> None:
    project = server.project_id
    made = create_ready_branch(client, project, name="restored")
    branch_id, parent_id = made["branch"]["id"], made["branch"]["parent_id"]
    url = _urls(client, project, made)["direct"]
    answer = client.post(
        f"/projects/{project}/branches/{branch_id}/restore",
        json={"source_branch_id": parent_id, "preserve_under_name": "restored-before"},
    )
    assert answer.status_code == 200, answer.text
    wait_operations(client, project, answer.json()["operations"])
    assert _opens(url), "the restored branch's URL stopped working"
    branches = client.get(f"/projects/{project}/branches").json()["branches"]
    saved = next(b for b in branches if b["name"] == "restored-before")
    revealed = client.get(f"/projects/{project}/branches/{saved['id']}/roles/cathouse_owner/reveal_password")
    assert revealed.json()["password"] != unquote(_password(url))
    for target in (branch_id, saved["id"]):
        delete_branch(client, project, target)
