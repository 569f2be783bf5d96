"""Reading CREATE / DROP DATABASE out of a query string (cathouse_harness.local.sql_databases):
the grammar the endpoint proxy takes over, and everything it leaves alone."""

from __future__ import annotations

import pytest
from cathouse_harness.local.sql_databases import (
    CreateDatabase,
    DropDatabase,
    Refused,
    classify,
    might_be_ours,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CREATE DATABASE gw1 TEMPLATE cathouse", CreateDatabase("gw1", "cathouse")),
        ('create database "Gw 1";', CreateDatabase("Gw 1")),
        ('Create Database GW WITH OWNER = o TEMPLATE = "T"', CreateDatabase("gw", "T", "o")),
        ("CREATE DATABASE x STRATEGY = wal_log TEMPLATE DEFAULT OWNER DEFAULT", CreateDatabase("x")),
        ("  /* a /* nested */ comment */ -- and a line\n CREATE DATABASE x", CreateDatabase("x")),
        ("DROP DATABASE gw1", DropDatabase("gw1")),
        ("drop database if exists gw1 with (force);", DropDatabase("gw1", if_exists=True, force=True)),
        ('DROP DATABASE "a""b" (FORCE, FORCE)', DropDatabase('a"b', force=True)),
    ],
)
def test_statements_taken_over(text: str, expected: object) -> None:
    assert classify(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "SELECT current_database()",
        "SELECT 'CREATE DATABASE x'",
        'SELECT 1 AS "create database"',
        "SELECT $$; DROP DATABASE x$$",
        "SELECT $tag$ CREATE DATABASE x $tag$",
        "-- CREATE DATABASE x\nSELECT 1",
        "COMMENT ON DATABASE cathouse IS 'x'",
    ],
)
def test_other_queries_are_left_alone(text: str) -> None:
    assert classify(text) is None


@pytest.mark.parametrize(
    ("text", "sqlstate", "words"),
    [
        ("SELECT 1; CREATE DATABASE x", "0A000", "combined with other statements"),
        ("DROP DATABASE x; DROP DATABASE y", "0A000", "combined with other statements"),
        ("ALTER DATABASE cathouse RENAME TO other", "0A000", "ALTER DATABASE"),
        ("ALTER DATABASE cathouse SET search_path = app", "0A000", "ALTER DATABASE"),
        ("CREATE DATABASE x ENCODING 'UTF8'", "0A000", "option ENCODING"),
        ("CREATE DATABASE x CONNECTION LIMIT 5", "0A000", "option CONNECTION LIMIT"),
        ("CREATE DATABASE x TEMPLATE a TEMPLATE b", "42601", "more than once"),
        ("CREATE DATABASE", "0A000", "cannot read"),
        ("CREATE DATABASE x TEMPLATE", "0A000", "cannot read"),
        ("DROP DATABASE x WITH FORCE", "0A000", "cannot read"),
        ("DROP DATABASE x ()", "0A000", "cannot read"),
        ("CREATE DATABASE 'x'", "0A000", "cannot read"),
    ],
)
def test_refused_with_one_clear_error(text: str, sqlstate: str, words: str) -> None:
    found = classify(text)
    assert isinstance(found, Refused)
    assert found.sqlstate == sqlstate and words in found.message


def test_the_cheap_check_only_passes_texts_naming_a_database() -> None:
    assert might_be_ours(b"create DataBase x")
    assert not might_be_ours(b"SELECT 1")
