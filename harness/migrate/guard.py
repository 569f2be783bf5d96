"""While a service migrates, connections may go to the branch and nowhere else.

A user's env.py decides where it connects. We hand it the branch in every way we know
(see `cathouse_harness.migrate.environment`), but an env.py that builds its URL from a variable
of its own, or loads a `.env` over ours, would migrate whatever database that names.
So for the length of each Alembic command a policy of the connection guard
(`cathouse_harness.db.guard`, the one that also keeps a test session on its branch) allows
the branch's direct endpoint and database only: a connection to anything else raises
`ForeignDatabaseRefused` before a socket opens, so no statement is ever sent there. A
connection to the branch with SQLAlchemy's password mask (`str(url)` handed on) raises
`MaskedPasswordRefused` instead of the server's "password authentication failed".

The guard is process-wide, not per thread: an env.py may connect from a thread or an
event loop of its own. So commands in one process take turns (a lock held for the
length of each), and there is one allowed endpoint at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cathouse_harness.db.guard import GuardRefusal, Target, guarded_by
from cathouse_harness.db.guard import refused_in as refused_in
from cathouse_harness.db.urls import Endpoint

DOCS_SECTION = "docs/your-project.md 'What your env.py needs'"


class ForeignDatabaseRefused(GuardRefusal):
    """An env.py tried to connect to something other than the branch being migrated."""

    def __init__(self, env_py: Path | None, attempted: str, allowed: Endpoint,
                 service: str | None = None) -> None:
        self.attempted = attempted
        where = str(env_py) if env_py else "a migration"
        prefix = f"service {service}: " if service else ""
        super().__init__(
            f"{prefix}{where} tried to connect to {attempted}, not the branch's direct endpoint "
            f"{allowed}; refused before any statement",
            hint="take the URL from sqlalchemy.url, MIGRATION_DATABASE_URL or "
            f"config.attributes['connection'] ({DOCS_SECTION})",
        )


# What SQLAlchemy's str(url) and repr(url) put where the password was.
MASKED_PASSWORD = "***"


class MaskedPasswordRefused(GuardRefusal):
    """An env.py handed on a URL whose password is SQLAlchemy's mask, not the password."""

    def __init__(self, env_py: Path | None, service: str | None = None) -> None:
        where = str(env_py) if env_py else "a migration"
        prefix = f"service {service}: " if service else ""
        super().__init__(
            f"{prefix}{where} connects with the password '{MASKED_PASSWORD}': str(url) of a "
            "SQLAlchemy URL hides the password, so the server would refuse it",
            hint="pass the URL object itself, or url.render_as_string(hide_password=False), "
            "or read MIGRATION_DATABASE_URL",
        )


class _MigrationOnly:
    """The branch's direct endpoint and the database being migrated, nothing else."""

    def __init__(self, allowed: Endpoint, env_py: Path | None, service: str | None) -> None:
        self.allowed = allowed
        self.env_py = env_py
        self.service = service

    def check(self, target: Target) -> None:
        wanted = (self.allowed.host, self.allowed.port)
        if target.database != self.allowed.database or target.endpoints() != [wanted]:
            raise ForeignDatabaseRefused(self.env_py, target.describe(), self.allowed, self.service)
        # before the server answers "password authentication failed" (a branch's
        # password, generated, is never the mask)
        if target.password == MASKED_PASSWORD:
            raise MaskedPasswordRefused(self.env_py, self.service)


_lock = threading.RLock()


@contextmanager
def only_connections_to(allowed: Endpoint, env_py: Path | None,
                        service: str | None = None) -> Iterator[None]:
    """For the length of the block, refuse every new connection that is not to `allowed`.

    Connections opened before the block (the runner's shared one) are not affected.
    """
    with _lock, guarded_by(_MigrationOnly(allowed, env_py, service)):
        yield
