"""TEMPORARY: stand-ins for the shared fixtures tests/conftest.py will provide.

Delete once tests/conftest.py defines pg_admin_dsn and fresh_database_url.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

SCRATCH = "postgresql://postgres@127.0.0.1:55502/postgres"


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(SCRATCH)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    return SCRATCH


@pytest.fixture
def fresh_database_url(pg_admin_dsn: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- fixtures of tests/migrations (these stay) -------------------------------------------

import shutil  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cathouse"


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """A private copy of examples/cathouse that a test may change."""
    target = tmp_path / "cathouse"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", ".env", "tests"))
    return target


@pytest.fixture
def add_revision() -> Callable[..., Path]:
    """Write a revision file into a service of a copied project."""

    def write(project: Path, service: str, revision: str, down_revision: str | None,
              upgrade: str, downgrade: str = "pass") -> Path:
        versions = project / service / "alembic" / "versions"
        path = versions / f"{revision}_test.py"
        def body(code: str) -> str:
            return textwrap.indent(textwrap.dedent(code).strip(), "    ")

        path.write_text(
            f'"""test revision {revision}"""\n'
            "import sqlalchemy as sa\n"
            "from alembic import op\n\n"
            f"revision = {revision!r}\n"
            f"down_revision = {down_revision!r}\n"
            "branch_labels = None\n"
            "depends_on = None\n\n\n"
            f"def upgrade():\n{body(upgrade)}\n\n\n"
            f"def downgrade():\n{body(downgrade)}\n",
            encoding="utf-8",
        )
        return path

    return write
