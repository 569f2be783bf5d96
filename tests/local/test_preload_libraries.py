"""Project `settings.preload_libraries` on the instance data plane: kept on a project
update, applied to the branches' instances (`shared_preload_libraries`, inherited by
later forks) where the local PostgreSQL has the library, refused in one line where it
does not. No library of Neon's list ships with the test PostgreSQL, so the applied path
runs with pg_stat_statements (which it has) added to the list for this module."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest
from cathouse_harness.local.sim import neon_features
from cathouse_harness.local.sim.neon_features import PreloadLibrary

from tests.local._server import connection_uri, wait_operations
from tests.local.test_snapshots import Api, instance_server

STATEMENTS = PreloadLibrary("pg_stat_statements", "statement statistics", True, "pg_stat_statements")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with instance_server(tmp_path_factory, "preload") as found:
        yield found


@pytest.fixture
def with_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        neon_features, "NEON_PRELOAD_LIBRARIES", (*neon_features.NEON_PRELOAD_LIBRARIES, STATEMENTS)
    )


def _patch(api: Api, preload: dict[str, object]) -> httpx.Response:
    return api.client.patch(
        f"/projects/{api.project}", json={"project": {"settings": {"preload_libraries": preload}}}
    )


def _preloaded(api: Api, branch_id: str | None = None) -> bool:
    """Whether pg_stat_statements is loaded on the branch's instance: its settings exist
    only then (SHOW shared_preload_libraries needs pg_read_all_settings)."""
    branches = api.client.get(f"/projects/{api.project}/branches").json()["branches"]
    branch = branch_id or next(b["id"] for b in branches if b["default"])
    with psycopg.connect(connection_uri(api.client, api.project, branch, pooled=False)) as session:
        row = session.execute("SELECT current_setting('pg_stat_statements.max', true)").fetchone()
    return row is not None and row[0] is not None


def test_neon_s_libraries_this_postgresql_lacks_are_not_listed_and_are_refused(api: Api) -> None:
    listed = api.client.get(f"/projects/{api.project}/available_preload_libraries").json()["libraries"]
    names = {lib["library_name"] for lib in listed}
    lacking = [lib.name for lib in neon_features.NEON_PRELOAD_LIBRARIES if lib.name not in names]
    assert lacking, "this PostgreSQL has every library of Neon's list: the refusal is not exercised"
    refused = _patch(api, {"enabled_libraries": [lacking[0]]})
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert lacking[0] in message and "offered by Neon but not installed" in message and "\n" not in message
    unknown = _patch(api, {"enabled_libraries": ["no_such_library"]})
    assert unknown.status_code == 400 and "not one Neon offers" in unknown.json()["message"]
    assert _patch(api, {"enabled_libraries": "pg_cron"}).status_code == 400


@pytest.mark.usefixtures("with_statements")
def test_an_enabled_library_is_kept_applied_and_inherited(api: Api) -> None:
    listed = api.client.get(f"/projects/{api.project}/available_preload_libraries").json()["libraries"]
    assert [lib["library_name"] for lib in listed] == ["pg_stat_statements"]
    assert listed[0]["version"]  # the installed extension's
    answer = _patch(api, {"use_defaults": False, "enabled_libraries": ["pg_stat_statements"]})
    assert answer.status_code == 200, answer.text
    assert {op["action"] for op in answer.json()["operations"]} == {"apply_config"}
    wait_operations(api.client, api.project, answer.json()["operations"])
    kept = api.client.get(f"/projects/{api.project}").json()["project"]["settings"]["preload_libraries"]
    assert kept == {"use_defaults": False, "enabled_libraries": ["pg_stat_statements"]}
    assert _preloaded(api)
    child = api.client.post(f"/projects/{api.project}/branches", json={"endpoints": [{"type": "read_write"}]})
    wait_operations(api.client, api.project, child.json()["operations"])
    assert _preloaded(api, child.json()["branch"]["id"])
    cleared = _patch(api, {"use_defaults": True, "enabled_libraries": []})
    wait_operations(api.client, api.project, cleared.json()["operations"])
    assert _preloaded(api)  # a default, and `use_defaults` asks for the defaults
    cleared = _patch(api, {"enabled_libraries": []})
    wait_operations(api.client, api.project, cleared.json()["operations"])
    assert not _preloaded(api)


@pytest.mark.usefixtures("with_statements")
def test_a_branch_restored_from_a_snapshot_gets_the_project_s_setting(api: Api) -> None:
    """The snapshot was taken before the library was enabled; the branch restored from it
    is a compute of the project now, with the project's preload libraries."""
    wait_operations(api.client, api.project, _patch(api, {"enabled_libraries": []}).json()["operations"])
    main = next(
        b["id"]
        for b in api.client.get(f"/projects/{api.project}/branches").json()["branches"]
        if b["default"]
    )
    taken = api.client.post(f"/projects/{api.project}/branches/{main}/snapshot")
    wait_operations(api.client, api.project, taken.json()["operations"])
    enabled = _patch(api, {"enabled_libraries": ["pg_stat_statements"]})
    wait_operations(api.client, api.project, enabled.json()["operations"])
    restored = api.client.post(f"/projects/{api.project}/snapshots/{taken.json()['snapshot']['id']}/restore")
    wait_operations(api.client, api.project, restored.json()["operations"])
    branch = restored.json()["branch"]["id"]
    made = api.client.post(
        f"/projects/{api.project}/endpoints", json={"endpoint": {"branch_id": branch, "type": "read_write"}}
    )
    wait_operations(api.client, api.project, made.json()["operations"])
    try:
        assert _preloaded(api, branch)
    finally:
        wait_operations(api.client, api.project, _patch(api, {"enabled_libraries": []}).json()["operations"])
