"""Revisions that need what Neon has and the wheel lacks (uuid-ossp, pgcrypto, an ICU
collation), migrated through a branch's endpoint of the local server: on a system
PostgreSQL (Debian's, which .ci/run installs) they apply; on the wheel the migration
fails with the one line naming the extension and how to get it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import MigrationError
from cathouse_harness.local.pg_choice import system_bin_dirs
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.migrate.all_services import migrate_all
from cathouse_harness.support.env import overridden

from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    sql,
    start_test_server,
    unique,
)

AUTH_HEAD = "8b4e6d0a5c21"
UPGRADE = """
op.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
op.execute(
    "CREATE COLLATION auth.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
)
op.execute(
    "CREATE TABLE auth.tokens ("
    " id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),"
    " secret_hash text NOT NULL DEFAULT crypt('s', gen_salt('bf')),"
    " label text COLLATE auth.ci)"
)
"""


def _system_bin() -> str:
    dirs = system_bin_dirs()
    if not dirs:
        pytest.skip(
            "no system PostgreSQL under /usr/lib/postgresql/<major>/bin "
            "(apt-get install postgresql; .ci/run installs it)"
        )
    return str(dirs[0])


@pytest.fixture
def project(example_copy: Path, add_revision: Callable[..., Path]) -> Path:
    add_revision(example_copy, "auth-service", "c0ffee000023", AUTH_HEAD, UPGRADE)
    return example_copy


@contextmanager
def _branch_url(home: Path, postgres_bin: str) -> Iterator[tuple[LocalServerInfo, str]]:
    """A local server on `postgres_bin` and the direct URL of a new branch of it."""
    with (
        overridden({"CATHOUSE_POSTGRES_BIN": postgres_bin}),
        start_test_server(home) as info,
        api_client(info) as client,
    ):
        made = create_ready_branch(client, info.project_id, name=unique("syspg"))
        yield info, connection_uri(client, info.project_id, made["branch"]["id"], pooled=False)


def test_revisions_needing_neon_features_migrate_on_a_system_postgresql(
    project: Path, tmp_path: Path
) -> None:
    bin_dir = _system_bin()
    with _branch_url(tmp_path / "home", bin_dir) as (info, url):
        results = migrate_all(load_settings(project, environ={}), url)
        assert results[0].after == "c0ffee000023"
        sql(url, "INSERT INTO auth.tokens (label) VALUES ('Tom')")
        row = sql(
            url,
            "SELECT id, secret_hash = crypt('s', secret_hash) AS checks FROM auth.tokens "
            "WHERE label = 'TOM'",  # the ICU collation ignores case
        )[0]
        assert row["checks"] is True and row["id"] is not None
        from cathouse_harness.local.discovery import probe

        answer = probe(info.api_host, info.api_key.reveal())
        assert answer is not None and answer["postgres_bin"] == bin_dir
        assert answer["features"]["icu"] is True
        # Debian's has file_fdw, Neon does not: on 15-17 an instance runs a mirror of the
        # installation whose share directory has only Neon's extensions
        with psycopg.connect(url) as conn, pytest.raises(psycopg.Error) as refused:
            conn.execute("CREATE EXTENSION file_fdw")
        said = refused.value.diag.message_primary or ""
        assert said == 'extension "file_fdw" is not available'


def test_the_same_revisions_on_the_wheel_fail_with_one_line(project: Path, tmp_path: Path) -> None:
    with _branch_url(tmp_path / "home", "wheel") as (_info, url):
        with pytest.raises(MigrationError) as caught:
            migrate_all(load_settings(project, environ={}), url)
        line = str(caught.value)
        assert "\n" not in line
        assert 'extension "uuid-ossp" is offered by Neon but not installed' in line
        assert "apt-get install postgresql" in line and "postgres_bin" in line
