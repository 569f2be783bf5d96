"""Named prepared statements through the pooled endpoint, as psycopg 3 and asyncpg make
them: they work where the embedded default's PgBouncer carries them (1.21+, or session
mode) and, where it cannot, the failing run says why in one line and how to fix it."""

from __future__ import annotations

import pytest
from cathouse_harness.local.data.pgbouncer import (
    carries_prepared_statements,
    find_pgbouncer,
    pgbouncer_version,
)

from tests._pgbouncer import require_pgbouncer

# Two clients one after the other prepare a statement under the same name, as two
# psycopg connections of an app do: transaction pooling hands both the same server
# connection, where the first one's statement is still there unless the pooler renames.
PREPARING_TESTS = """
import psycopg


def test_two_clients_prepare_the_same_statement(neon_branch):
    for _ in range(2):
        with psycopg.connect(neon_branch.pooled_url, autocommit=True) as connection:
            assert connection.execute("SELECT 1 + %s", [1], prepare=True).fetchone() == (2,)
"""

HINT = "cathouse-harness: a test failed on a prepared statement"


def test_prepared_statements_through_the_pooled_endpoint(project: pytest.Pytester) -> None:
    require_pgbouncer("prepared statements through the pooler")
    binary = find_pgbouncer()
    assert binary is not None
    carried = carries_prepared_statements(pgbouncer_version(binary), "transaction")
    project.makepyfile(test_prepare=PREPARING_TESTS)
    result = project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    out = result.stdout.str()
    if carried:
        result.assert_outcomes(passed=1)
        assert HINT not in out
        return
    result.assert_outcomes(failed=1)
    assert 'prepared statement "_pg3_0" already exists' in out
    hint = [line for line in out.splitlines() if line.startswith(HINT)]
    assert len(hint) == 1, out
    assert f"PgBouncer {'.'.join(map(str, pgbouncer_version(binary) or ()))} in transaction mode" in hint[0]
    assert 'pooler_mode = "session"' in hint[0] and "1.21" in hint[0]


def test_a_pooler_mode_the_running_server_does_not_have_is_one_line(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode belongs to the home's server, which every session of the home shares:
    asking another one of a running server is refused before any branch is made."""
    require_pgbouncer("a pool mode")
    project.makepyfile(test_ok="def test_ok(neon_branch):\n    pass\n")
    # the suite's server is up, in Neon's mode: start it if this test runs first
    project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("CATHOUSE_POOLER_MODE", "session")
    result = project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    assert result.ret == 1, result.stdout.str()
    lines = [line for line in result.stdout.lines + result.stderr.lines if "pooler_mode = 'session'" in line]
    assert len(lines) == 1, result.stdout.str() + result.stderr.str()
    assert "pools in transaction mode" in lines[0] and "CATHOUSE_POOLER_MODE" in lines[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_bad_pooler_mode_is_one_line(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_ok="def test_ok(neon_branch):\n    pass\n")
    monkeypatch.setenv("CATHOUSE_POOLER_MODE", "statement")
    result = project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret in (2, 4), text
    assert "'statement' is not 'transaction' (Neon's) or 'session'" in text
    assert "Traceback" not in text
