"""The user project each fault case runs: the Cat House example plus a small test file
whose tests can stop at a gate (so a case can strike at a known moment) and migrations
that can be made slow or broken."""

from __future__ import annotations

from pathlib import Path

TEST_FILE = '''
import asyncio
import os
import pathlib
import time

import asyncpg


def gate(name):
    """Tell the case we reached `name`, then wait for its go-ahead."""
    where = os.environ.get("RELIABILITY_GATES")
    if not where or name not in os.environ.get("RELIABILITY_STOP_AT", "").split(","):
        return
    gates = pathlib.Path(where)
    (gates / f"reached-{name}").write_text(str(os.getpid()))
    while not (gates / f"go-{name}").exists():
        time.sleep(0.02)


async def _run(url, sql):
    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_writes_on_its_own_branch(neon_branch, migration_database_url):
    # committed rows on the session branch: the parent must never see them
    asyncio.run(_run(migration_database_url, "INSERT INTO auth.users (email) VALUES ('t@x')"))
    asyncio.run(_run(migration_database_url, "CREATE TABLE public.scratch (n int)"))
    gate("test")


def test_reads_after_the_gate(neon_branch, migration_database_url):
    assert asyncio.run(_run(migration_database_url, "SELECT count(*) FROM auth.users")) == 1
    gate("teardown")


def test_optional_failure(neon_branch):
    # not `assert not os.environ.get(...)`: pytest would print the whole environment,
    # DATABASE_URL (with its password, by design) included
    fail = os.environ.get("RELIABILITY_FAIL")
    assert not fail, "failing on purpose"
'''

CRASH_FILE = '''
import os
import signal

import pytest


@pytest.mark.parametrize("n", range(4))
def test_worker(neon_branch, n):
    # whichever worker gets this one dies (xdist hands tests to the first free worker)
    if n == 3 and os.environ.get("PYTEST_XDIST_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)
'''

EXTRA_REVISION = '''
"""{title}

Revision ID: {revision}
Revises: 7d1b5f8a3e64
"""

from alembic import op

revision = "{revision}"
down_revision = "7d1b5f8a3e64"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("{sql}")


def downgrade() -> None:
    pass
'''


def add_revision(project: Path, revision: str, sql: str, title: str = "reliability case") -> None:
    """An extra installation-service revision: a new migration fingerprint, so the run
    builds a template of its own, running `sql` while it migrates."""
    versions = project / "installation-service" / "alembic" / "versions"
    text = EXTRA_REVISION.format(title=title, revision=revision, sql=sql)
    (versions / f"{revision}_reliability.py").write_text(text)
