"""Against real Neon: runs only with NEON_API_KEY and NEON_PROJECT_ID (`tox -e neon`).

Everything here creates its own harness branches and deletes them; nothing else in the
project is touched (the safety gate refuses it anyway).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import asyncpg
import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.db.urls import normalize_asyncpg_url
from cathouse_harness.session.branch_session import BranchSession

from tests.conftest import REAL_NEON_API_KEY, REAL_NEON_PROJECT_ID
from tests.plugin._support import copy_example

pytestmark = [
    pytest.mark.neon,
    pytest.mark.skipif(
        not (REAL_NEON_API_KEY and REAL_NEON_PROJECT_ID),
        reason="real Neon needs NEON_API_KEY and NEON_PROJECT_ID",
    ),
]


@pytest.fixture
def neon_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert REAL_NEON_API_KEY and REAL_NEON_PROJECT_ID
    monkeypatch.setenv("NEON_API_KEY", REAL_NEON_API_KEY)
    monkeypatch.setenv("NEON_PROJECT_ID", REAL_NEON_PROJECT_ID)
    return copy_example(tmp_path)


def test_session_branch_on_real_neon(neon_project: Path) -> None:
    settings = load_settings(neon_project, options={"branch_ttl": "10m"})
    assert settings.backend == "neon"
    session = BranchSession(settings, run_id=f"live-{uuid.uuid4().hex[:8]}")
    try:
        handle = session.start()

        async def check() -> list[str]:
            schemas = []
            for url in (str(handle.direct_url), normalize_asyncpg_url(str(handle.pooled_url))):
                dsn = url.replace("postgresql+asyncpg://", "postgresql://").replace("ssl=", "sslmode=")
                connection = await asyncpg.connect(dsn, statement_cache_size=0)
                try:
                    rows = await connection.fetch(
                        "SELECT table_schema FROM information_schema.tables "
                        "WHERE table_name = 'alembic_version' ORDER BY 1"
                    )
                    schemas.append(",".join(r[0] for r in rows))
                finally:
                    await connection.close()
            return schemas

        assert asyncio.run(check()) == ["auth,catalog,installation"] * 2
        assert "-pooler" in str(handle.pooled_url)
    finally:
        session.finish()
    assert session.handle is not None


def test_plugin_on_real_neon(neon_project: Path, pytester: pytest.Pytester) -> None:
    for item in neon_project.iterdir():
        target = pytester.path / item.name
        if not target.exists():
            item.rename(target)
    pytester.makepyfile(
        test_live="""
def test_branch(neon_branch):
    assert "-pooler" in neon_branch.pooled_url
"""
    )
    result = pytester.runpytest_subprocess("-p", "cathouse_harness", "--cathouse-ttl", "10m")
    result.assert_outcomes(passed=1)
    assert os.environ.get("NEON_API_KEY", "") not in result.stdout.str()


def test_worker_databases_on_real_neon(neon_project: Path) -> None:
    """An xdist controller's worker databases (`CREATE DATABASE … TEMPLATE` over SQL) and a
    worker's reset (drop + copy again) on Neon's compute, not only on the embedded default."""
    import psycopg

    settings = load_settings(neon_project, options={"branch_ttl": "10m"})
    session = BranchSession(settings, run_id=f"live-{uuid.uuid4().hex[:8]}", worker="controller")
    try:
        session.setup()
        first, second = session.fork_worker("gw0"), session.fork_worker("gw1")
        assert first.id == second.id and (first.database, second.database) == ("cathouse_gw0", "cathouse_gw1")
        with psycopg.connect(str(first.direct_url), autocommit=True) as connection:
            connection.execute("INSERT INTO auth.users (email) VALUES ('gw0@example.org')")
        with psycopg.connect(str(second.direct_url)) as connection:
            assert connection.execute("SELECT count(*) FROM auth.users").fetchone() == (0,)
        worker = BranchSession(settings, run_id=session.run_id, worker="gw0", prepared=True)
        worker.handle = first
        worker.reset()
        with psycopg.connect(str(first.pooled_url)) as connection:
            assert connection.execute("SELECT count(*) FROM auth.users").fetchone() == (0,)
    finally:
        session.finish()


def test_the_next_session_claims_a_spare_on_real_neon(
    neon_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cathouse_harness.branching.lifecycle import delete_owned_branch
    from cathouse_harness.branching.spares import claim
    from cathouse_harness.neon.backend import connect_backend, open_client

    monkeypatch.setenv("CATHOUSE_SPARE", "true")
    settings = load_settings(neon_project, options={"branch_ttl": "10m"})
    first = BranchSession(settings, run_id=f"live-{uuid.uuid4().hex[:8]}")
    try:
        first.start()
    finally:
        first.finish()
    refill = first.refill_process
    assert refill is not None and refill.wait(timeout=300) == 0
    second = BranchSession(settings, run_id=f"live-{uuid.uuid4().hex[:8]}")
    try:
        handle = second.start()
        assert second.report.spare == "claimed"

        async def one() -> int:
            connection = await asyncpg.connect(str(handle.direct_url))
            try:
                return int(await connection.fetchval("SELECT 1"))
            finally:
                await connection.close()

        assert asyncio.run(one()) == 1
    finally:
        second.finish()
    refill = second.refill_process
    if refill is not None:
        refill.wait(timeout=300)
    slot = second._spares._slot
    assert slot is not None
    left = claim(slot)  # the refill's spare: this test's to remove

    async def remove() -> None:
        backend = connect_backend(settings)
        async with open_client(backend) as client:
            await delete_owned_branch(client, backend.project_id, left.branch_id)

    if left is not None:
        asyncio.run(remove())


def test_rehearse_and_diff_on_real_neon(neon_project: Path) -> None:
    """A rehearsal forks the project's default branch (only read), reports every
    revision it ran and removes its fork; `diff` of a kept fork shows the same diff."""
    import json

    from tests.cli._support import cli

    code, out, err = cli("rehearse", "--json", "--keep", "--ttl", "10m", cwd=neon_project)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["fork"]["kept"]
    for revision in report["revisions"]:
        assert revision["seconds"] >= 0 and revision["error"] is None
    fork = report["fork"]["id"]
    assert report["fork"]["remove"] == f"cathouse-branch down {fork}"
    try:
        code, out, err = cli("diff", fork, "--json", cwd=neon_project)
        assert code == 0, err
        assert json.loads(out)["diff"] == report["schema_diff"]
    finally:
        code, _, err = cli("down", fork, cwd=neon_project)
        assert code == 0, err
    code, out, err = cli("list", "--json", cwd=neon_project)
    assert fork not in {b["id"] for b in json.loads(out)["branches"]}
