"""Neon's supported extensions pinned with their date, the one-line refusals, and the
classifier that finds CREATE EXTENSION / ICU collations in a query's text."""

from __future__ import annotations

from cathouse_harness.local.sim.neon_features import (
    NEON_EXTENSIONS,
    NEON_EXTENSIONS_AS_OF,
    ServerFeatures,
    extension_refusal,
)
from cathouse_harness.support.env import overridden

WHEEL = ServerFeatures(frozenset({"plpgsql", "citext", "file_fdw"}), False, "the wheel's PostgreSQL 18.6")


def test_neons_list_is_pinned_with_its_date() -> None:
    # https://neon.com/docs/extensions/pg-extensions as of 2025-01-11 (see neon_features)
    assert NEON_EXTENSIONS_AS_OF == "2025-01-11"
    assert len(NEON_EXTENSIONS) == 79
    assert {"uuid-ossp", "pgcrypto", "citext", "pg_trgm", "postgis", "vector", "ulid",
            "roaringbitmap", "timescaledb", "dblink", "postgres_fdw", "plpgsql"} <= NEON_EXTENSIONS
    # the ones Neon's page says it does not support, and contrib modules it does not list
    assert not {"file_fdw", "sslinfo", "pg_search", "uuid", "adminpack", "pgvector"} & NEON_EXTENSIONS


def test_refusals_are_one_line_each() -> None:
    assert extension_refusal("citext", WHEEL) is None
    assert extension_refusal("pgcrypto", None) is None  # features unknown: Neon's list alone
    refused = extension_refusal("file_fdw", WHEEL)
    assert refused is not None and refused.startswith('extension "file_fdw" is not offered by Neon')
    missing = extension_refusal("pgcrypto", WHEEL)
    assert missing is not None and "the wheel's PostgreSQL 18.6" in missing
    assert "apt-get install postgresql" in missing and "postgres_bin" in missing
    for line in (refused, missing):
        assert "\n" not in line


def test_an_extension_neon_added_since_can_be_allowed() -> None:
    with overridden({"CATHOUSE_EXTRA_EXTENSIONS": "pg_buffercache, file_fdw"}):
        assert extension_refusal("file_fdw", WHEEL) is None


def test_missing_lists_what_neon_has_and_the_server_lacks() -> None:
    wanted = ["citext", "uuid-ossp", "icu", "pgcrypto"]
    assert WHEEL.missing(wanted) == ["pgcrypto", "uuid-ossp", "ICU collations"]
