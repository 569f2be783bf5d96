"""Ordered multi-service Alembic migrations: the API (its command line is
`cathouse-branch migrate`, also `python -m harness migrate`).

Services migrate in the order `[tool.cathouse_harness].services` lists them, each with
Alembic's command API and its version table in its own schema, over the direct
(non-pooled) URL. Alembic runs in this process, and every service shares one database
connection: no interpreter start-up, no connect per service. See
`cathouse_harness.migrate.runner` for the transaction rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cathouse_harness.branching.fingerprint import migration_fingerprint
from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import MigrationError
from cathouse_harness.migrate.checks import (
    check_order,
    check_round_trip,
    check_schema_isolation,
    check_single_head,
)
from cathouse_harness.migrate.connection import run_with_connection
from cathouse_harness.migrate.environment import script_directory
from cathouse_harness.migrate.heads import HEAD_TARGETS, Standing, standing
from cathouse_harness.migrate.run_memo import once_per_run
from cathouse_harness.migrate.runner import (
    ServiceResult,
    current_heads,
    describe_result,
    join_heads,
    upgrade_service,
)
from cathouse_harness.support.progress import Progress, reporting, say
from sqlalchemy.engine import Connection

__all__ = [
    "ServiceResult",
    "check_order",
    "check_round_trip",
    "check_schema_isolation",
    "check_single_head",
    "current_revisions",
    "head_revisions",
    "migrate_all",
    "migration_fingerprint",
    "standings",
]

ENV_URL = "MIGRATION_DATABASE_URL"


def head_revisions(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Each migrating service's head revision(s), read from its scripts."""
    heads: dict[str, tuple[str, ...]] = {}
    for service in settings.migrating_services:
        try:
            heads[service.name] = tuple(sorted(script_directory(service).get_heads()))
        except Exception as exc:
            raise MigrationError(
                f"cannot read its revisions ({type(exc).__name__}: {exc})", service=service.name
            ) from exc
    return heads


def _migrate_on(connection: Connection, settings: Settings, target: str | Sequence[str] | None,
                reporter: Callable[[str], None] | None,
                heads: dict[str, tuple[str, ...]] | None, seed: bool) -> list[ServiceResult]:
    results = []
    for service in settings.migrating_services:
        say(f"migrating {service.name}")  # each revision then says its own step
        result = upgrade_service(connection, settings, service, target)
        results.append(result)
        if reporter is not None:
            reporter(describe_result(result, heads.get(service.name) if heads else None))
    if seed and settings.seed:
        from cathouse_harness.migrate.seed import apply_seed

        apply_seed(connection, settings)
    return results


def migrate_all(
    settings: Settings,
    direct_url: str,
    *,
    target: str | Sequence[str] | None = None,
    reporter: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    seed: bool = False,
) -> list[ServiceResult]:
    """Upgrade every migrating service to `target` (None: each service's own, see
    `cathouse_harness.migrate.heads`), in configured order, on one connection; then, when
    `seed`, put the configured seed in (`cathouse_harness.migrate.seed`): a new branch's
    (a template's, a dev branch's) only, as the seed is data, not revisions that know
    whether they ran. `progress` hears which service and revision it is at
    (`cathouse_harness.support.progress`).

    Stops at the first failing service with MigrationError(service=, revision=,
    db_error=). Safe to call from synchronous code, from a worker thread, or from a
    thread that runs an event loop (the work runs in a thread of its own).
    """
    with once_per_run(), reporting(progress):
        heads = head_revisions(settings) if reporter is not None else None
        return run_with_connection(
            direct_url,
            lambda connection: _migrate_on(connection, settings, target, reporter, heads, seed),
        )


def current_revisions(settings: Settings, direct_url: str) -> dict[str, str | None]:
    """Each migrating service's revision in the database (None: not migrated)."""

    def read(connection: Connection) -> dict[str, str | None]:
        return {
            s.name: join_heads(current_heads(connection, s))
            for s in settings.migrating_services
        }

    return run_with_connection(direct_url, read)


def standings(settings: Settings, direct_url: str) -> dict[str, Standing]:
    """Each migrating service's database revisions against its target's revisions (every
    head for `heads`): at, behind, ahead or diverged."""
    from cathouse_harness.migrate.runner import upgrade_targets

    def read(connection: Connection) -> dict[str, Standing]:
        found = {}
        for service in settings.migrating_services:
            database = current_heads(connection, service)
            script = script_directory(service)
            found[service.name] = standing(script, database,
                                           upgrade_targets(settings, service))
        return found

    return run_with_connection(direct_url, read)


# --- the command line is `cathouse-branch migrate` (also `python -m harness migrate`) ---


def summary_line(results: Sequence[ServiceResult], seconds: float) -> str:
    """`all services at head; migrated 2 of 3 services in 0.41 s` (or `…; nothing changed`)."""
    changed = sum(r.changed for r in results)
    targets = {r.target for r in results}
    if targets <= set(HEAD_TARGETS):
        where = "at head"
    elif len(targets) == 1:
        where = f"at {', '.join(next(iter(targets)))}"
    else:
        where = "at their targets"
    if changed:
        return f"all services {where}; migrated {changed} of {len(results)} services in {seconds:.2f} s"
    return f"all services {where}; nothing changed"


