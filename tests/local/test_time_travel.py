"""Neon's time-travel connections (#25 part 3): `options=neon_timestamp:<time>` or
`neon_lsn:<lsn>` in the startup (what `neonctl connection-string <branch>@<time>` adds)
connect read-only to the branch as of that moment where the local history has it
(`cathouse_harness.local.control.history`, the rule `parent_timestamp` follows), and are refused
in one FATAL line where it does not; the word never reaches PostgreSQL, which would
refuse it as a command-line option of its own."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.local._server import (
    connection_uri,
    create_ready_branch,
    delete_branch,
    instance_per_branch,
    unique,
)
from tests.local.test_history import create_at, moment, parent_lsn, write


def _rows(uri: str, options: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(uri, options=options, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(statement).fetchall()


def _refusal(uri: str, options: str) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(uri, options=options, autocommit=True, connect_timeout=10).close()
    return str(refused.value)


def _now_rows(uri: str, statement: str) -> list[tuple[object, ...]]:
    """The rows as of a `neon_timestamp` of now, asked again until the server has seen
    the last writer leave (as tests/local/test_history.py's `accepted` does)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return _rows(uri, f"neon_timestamp:{moment()}", statement)
        except psycopg.OperationalError as exc:
            if "no kept state" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def test_a_kept_past_state_is_served_read_only(client: httpx.Client, project: str) -> None:
    base = create_ready_branch(client, project, name=unique("tt"))["branch"]
    table = f"tt_{secrets.token_hex(4)}"
    write(client, project, base["id"], f"CREATE TABLE {table} AS SELECT 'first' AS v")
    kept, then = create_at(client, project, base["id"])  # holds base as of `then`
    lsn = parent_lsn(client, project, kept["id"])
    write(client, project, base["id"], f"INSERT INTO {table} VALUES ('second')")
    uri = connection_uri(client, project, base["id"], pooled=False)
    select = f"SELECT v FROM {table} ORDER BY v"
    try:
        assert _rows(uri, f"neon_timestamp:{then}", select) == [("first",)]
        assert _rows(uri, f"neon_lsn:{lsn}", select) == [("first",)]
        assert _now_rows(uri, select) == [("first",), ("second",)]
        # the other options still reach PostgreSQL
        assert _rows(uri, f"neon_timestamp:{then} -c search_path=elsewhere",
                     "SELECT current_setting('search_path')") == [("elsewhere",)]
        with psycopg.connect(uri, options=f"neon_timestamp:{then}", autocommit=True) as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"INSERT INTO {table} VALUES ('written')")
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"CREATE DATABASE tt_{secrets.token_hex(4)}")
        # neither the branch nor the copy that held its past was written to
        assert _now_rows(uri, select) == [("first",), ("second",)]
        kept_uri = connection_uri(client, project, kept["id"], pooled=False)
        assert _rows(kept_uri, "", select) == [("first",)]
    finally:
        delete_branch(client, project, kept["id"])
        delete_branch(client, project, base["id"])


def test_moments_the_history_lacks_are_refused_in_one_line(client: httpx.Client, project: str) -> None:
    base = create_ready_branch(client, project, name=unique("tt-refused"))["branch"]
    table = f"tt_{secrets.token_hex(4)}"
    write(client, project, base["id"], f"CREATE TABLE {table} AS SELECT 'first' AS v")
    between = moment()  # nothing kept this state: the branch changes after it
    write(client, project, base["id"], f"INSERT INTO {table} VALUES ('second')")
    uri = connection_uri(client, project, base["id"], pooled=False)
    pooled = connection_uri(client, project, base["id"], pooled=True)
    if instance_per_branch():  # its WAL since its base has it, replayed
        assert _rows(uri, f"neon_timestamp:{between}", f"SELECT v FROM {table}") == [("first",)]
        # before this server started: no base of the branch, nothing of its parent (the root) either
        lacked = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    else:
        lacked = between
    try:
        for target, options, said in (
            (uri, f"neon_timestamp:{lacked}", "no kept state"),
            (uri, "neon_timestamp:2020-01-01T00:00:00Z", "history retention window"),
            (uri, "neon_timestamp:2999-01-01T00:00:00Z", "in the future"),
            (uri, "neon_timestamp:yesterday", "RFC 3339"),
            (uri, "neon_lsn:FFFFFFFF/FFFFFFFF", "in the future"),
            (uri, "neon_lsn:not-an-lsn", "LSN"),
            (uri, "neon_lsn:0/1 neon_timestamp:2020-01-01T00:00:00Z", "more than one moment"),
            (pooled, "neon_timestamp:2020-01-01T00:00:00Z", "drop -pooler"),
        ):
            message = _refusal(target, options)
            assert said in message, (options, message)
            assert "invalid command-line argument" not in message
    finally:
        delete_branch(client, project, base["id"])
