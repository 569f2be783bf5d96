"""Fixtures of the migration tests: private copies of the example project to break.

PostgreSQL itself (pg_admin_dsn, fresh_database_url) comes from tests/conftest.py.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

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
