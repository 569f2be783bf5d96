"""What a test sees: its own branch, a rolled-back session, a reset on request."""

from __future__ import annotations

import os
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

COUNT_KEPT = text("SELECT count(*) FROM auth.users WHERE email = 'kept@cathouse.test'")
COUNT_ROLLBACK = text("SELECT count(*) FROM auth.users WHERE email = 'rollback@cathouse.test'")


def test_environment_names_the_session_branch(database_url: str, migration_database_url: str) -> None:
    assert os.environ["DATABASE_URL"] == database_url
    assert os.environ["MIGRATION_DATABASE_URL"] == migration_database_url
    assert database_url != migration_database_url


async def test_schemas_and_version_tables_are_in_place(db_session: AsyncSession) -> None:
    rows = await db_session.execute(
        text(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version' "
            "ORDER BY table_schema"
        )
    )
    assert [r[0] for r in rows] == ["auth", "catalog", "installation"]


async def test_db_session_writes_even_commits(db_session: AsyncSession) -> None:
    await db_session.execute(text("INSERT INTO auth.users (email) VALUES ('rollback@cathouse.test')"))
    await db_session.commit()
    found = await db_session.scalar(COUNT_ROLLBACK)
    assert found == 1


async def test_previous_commit_was_rolled_back(db_session: AsyncSession) -> None:
    found = await db_session.scalar(COUNT_ROLLBACK)
    assert found == 0


async def test_reset_branch_returns_to_the_migrated_template(
    service_engine: Callable[[str], AsyncEngine], reset_branch: Callable[[], None]
) -> None:
    engine = service_engine("auth-service")
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO auth.users (email) VALUES ('kept@cathouse.test')"))
    async with engine.connect() as connection:
        assert await connection.scalar(COUNT_KEPT) == 1
    await engine.dispose()  # the reset ends every session on the branch
    reset_branch()
    async with engine.connect() as connection:
        assert await connection.scalar(COUNT_KEPT) == 0
        assert await connection.scalar(text("SELECT count(*) FROM auth.alembic_version")) == 1
