"""Putting `seed` (`cathouse_harness.config.seed`) into a branch after its migrations.

It runs on the migrations' own connection (no second connect), in one transaction that
is committed after the last step: a failing step leaves nothing of the seed behind, and
the template being built with it is then deleted (`cathouse_harness.branching.templates`).
Each SQL file is sent whole, as one simple-protocol script (psycopg without parameters,
as pytest-postgresql's `load=` sends a file), so it may hold many statements but no
`COPY … FROM STDIN`. Each callable receives that SQLAlchemy Connection; it is imported
from the project root with the modules it brings forgotten afterwards, like an env.py's
(`cathouse_harness.migrate.environment.isolated_imports`), so that nothing it built at
import outlives the build.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cathouse_harness.config.seed import KEY, SeedCall
from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import ConfigError, HarnessError, MigrationError
from cathouse_harness.migrate.connection import describe_exception
from cathouse_harness.migrate.environment import in_directory, isolated_imports
from cathouse_harness.migrate.runner import end_transaction
from cathouse_harness.support.progress import say
from sqlalchemy.engine import Connection


class SeedError(MigrationError):
    """A seed step failed on the database (or in the callable's own code)."""

    def __init__(self, step: str, exc: BaseException) -> None:
        self.step = step
        self.service = self.revision = None
        self.db_error = describe_exception(exc)
        # not MigrationError's "migration failed in …": the migrations went through
        HarnessError.__init__(self, f"seed {step} failed: {self.db_error}",
                              hint="fix it and run again")


def apply_seed(connection: Connection, settings: Settings) -> None:
    """Run every SQL file, then every callable, of `settings.seed` on `connection`, and
    commit them together (nothing of them stays when one fails)."""
    seed = settings.seed
    end_transaction(connection)
    # settings an env.py left on the shared session (a search_path, say) are not the seed's
    connection.exec_driver_sql("RESET ALL")
    try:
        for path in seed.sql:
            shown = _shown(path, settings)
            say(f"seeding {shown}")
            _step(shown, _run_script, connection, path.read_text(encoding="utf-8"))
        if seed.calls:
            with isolated_imports(settings.project_root), in_directory(settings.project_root):
                sys.path.insert(0, str(settings.project_root))
                for call in seed.calls:
                    function = _imported(call, settings)
                    say(f"seeding {call}")
                    _step(str(call), function, connection)
        connection.commit()
    except BaseException:
        end_transaction(connection)
        raise


def _step(name: str, work: Callable[..., object], *args: Any) -> None:
    try:
        work(*args)
    except HarnessError:
        raise
    except Exception as exc:
        raise SeedError(name, exc) from exc


def _run_script(connection: Connection, script: str) -> None:
    # the driver's own cursor: without parameters psycopg sends the text as it is, every
    # statement in it, where SQLAlchemy's text() would look for :names in it
    cursor = connection.connection.cursor()
    try:
        cursor.execute(script)
    finally:
        cursor.close()
    # SQLAlchemy began the transaction when the connection was first used; the script ran
    # inside it (the driver's connection is in the same transaction)


def _imported(call: SeedCall, settings: Settings) -> Callable[[Connection], Any]:
    source = settings.source_of(KEY)
    try:
        module = importlib.import_module(call.module)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"cannot import {call} ({type(exc).__name__}: {first})", key=KEY, source=source,
            hint=f"modules are imported from {settings.project_root}",
        ) from None
    function = getattr(module, call.function, None)
    if not callable(function):
        raise ConfigError(
            f"{call.module} has no function {call.function!r}", key=KEY, source=source,
            hint="the callable takes one argument, a SQLAlchemy Connection to the new branch",
        )
    return function  # type: ignore[no-any-return]


def _shown(path: Path, settings: Settings) -> str:
    root = settings.project_root
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
