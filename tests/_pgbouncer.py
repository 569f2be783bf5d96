"""Tests on a machine without PgBouncer (or with CATHOUSE_PGBOUNCER=off): the embedded
default's pooled endpoints then reach PostgreSQL directly, so what only PgBouncer does
is skipped with a reason naming it, and the rest of a pooled-path test still runs."""

from __future__ import annotations

import pytest
from cathouse_harness.local.data.pgbouncer import find_pgbouncer

WHY = "pgbouncer is not installed (or CATHOUSE_PGBOUNCER=off)"


def have_pgbouncer() -> bool:
    return find_pgbouncer() is not None


def require_pgbouncer(what: str) -> None:
    """Skip the test here, naming PgBouncer, when it is not what the local server runs."""
    if not have_pgbouncer():
        pytest.skip(f"{what} needs PgBouncer: {WHY}")


def pooled_backends(clients: int) -> int:
    """How many server backends `clients` consecutive pooled connections see: PgBouncer's
    transaction pooling shares one; without it the pooled endpoint forwards to
    PostgreSQL, a backend per client."""
    return 1 if have_pgbouncer() else clients
