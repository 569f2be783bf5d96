"""Ordered multi-service Alembic migrations: runner, fingerprint, checks and command line.

    python -m harness.migrations [--url URL] [--project DIR] [--target head]

Services migrate in the order `[tool.cathouse_harness].services` lists them, each with
Alembic's command API and its version table in its own schema, over the direct
(non-pooled) URL. Alembic runs in this process, and every service shares one database
connection: no interpreter start-up, no connect per service. See
`harness.migrate.runner` for the transaction rules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter

from sqlalchemy.engine import Connection

from harness import env
from harness.errors import ConfigError, HarnessError, MigrationError
from harness.fingerprint import migration_fingerprint
from harness.migrate.checks import (
    check_order,
    check_round_trip,
    check_schema_isolation,
    check_single_head,
)
from harness.migrate.connection import run_with_connection
from harness.migrate.environment import script_directory
from harness.migrate.runner import (
    ServiceResult,
    current_heads,
    describe_result,
    join_heads,
    upgrade_service,
)
from harness.redact import scrub
from harness.settings import Settings, load_settings
from harness.urls import url_from_argument

__all__ = [
    "ServiceResult",
    "check_order",
    "check_round_trip",
    "check_schema_isolation",
    "check_single_head",
    "current_revisions",
    "head_revisions",
    "main",
    "migrate_all",
    "migration_fingerprint",
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


def _migrate_on(connection: Connection, settings: Settings, target: str,
                reporter: Callable[[str], None] | None,
                heads: dict[str, tuple[str, ...]] | None) -> list[ServiceResult]:
    results = []
    for service in settings.migrating_services:
        result = upgrade_service(connection, settings, service, target)
        results.append(result)
        if reporter is not None:
            reporter(describe_result(result, heads.get(service.name) if heads else None))
    return results


def migrate_all(
    settings: Settings,
    direct_url: str,
    *,
    target: str = "head",
    reporter: Callable[[str], None] | None = None,
) -> list[ServiceResult]:
    """Upgrade every migrating service to `target`, in configured order, on one connection.

    Stops at the first failing service with MigrationError(service=, revision=,
    db_error=). Safe to call from synchronous code, from a worker thread, or from a
    thread that runs an event loop (the work runs in a thread of its own).
    """
    heads = head_revisions(settings) if reporter is not None and target in ("head", "heads") \
        else None
    return run_with_connection(
        direct_url, lambda connection: _migrate_on(connection, settings, target, reporter, heads)
    )


def current_revisions(settings: Settings, direct_url: str) -> dict[str, str | None]:
    """Each migrating service's revision in the database (None: not migrated)."""

    def read(connection: Connection) -> dict[str, str | None]:
        return {
            s.name: join_heads(current_heads(connection, s))
            for s in settings.migrating_services
        }

    return run_with_connection(direct_url, read)


# --- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.migrations",
        description="Migrate every service of the project, in configured order.",
    )
    parser.add_argument(
        "--url", help=f"direct database URL without a password, or - to read it from stdin "
        f"(default: ${ENV_URL}, then .env)")
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    parser.add_argument("--target", default="head", help="revision to upgrade to (default: head)")
    return parser


def _resolve_url(argument: str | None, project_root: Path) -> str:
    if argument:
        return url_from_argument(argument)
    from_env = env.read(ENV_URL)
    if from_env:
        return from_env
    dotenv_path = project_root / ".env"
    if dotenv_path.is_file():
        from dotenv import dotenv_values

        value = dotenv_values(dotenv_path).get(ENV_URL)
        if value:
            return value
    raise ConfigError(
        "is not set",
        key=ENV_URL,
        source=f"--url, the environment and {dotenv_path}",
        hint="pass --url or set it to the direct (non-pooled) database URL",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one usage line
        return 2 if exc.code not in (0, None) else 0
    started = perf_counter()
    try:
        project = Path(args.project)
        if not project.is_dir():
            raise ConfigError(f"{args.project!r} is not a directory", key="--project")
        settings = load_settings(project)
        url = _resolve_url(args.url, settings.project_root)
        if not settings.migrating_services:
            raise ConfigError(
                "no service has migrations (alembic_ini)",
                key="services",
                source=settings.source_of("services"),
                hint="is --project the directory whose pyproject.toml configures them?",
            )
        results = migrate_all(
            settings, url, target=args.target, reporter=lambda line: print(line, flush=True)
        )
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # never a traceback (which could show a URL) to the user
        print(f"error: {scrub(f'{type(exc).__name__}: {exc}'.splitlines()[0])}", file=sys.stderr)
        return 1
    changed = sum(r.changed for r in results)
    where = "at head" if args.target in ("head", "heads") else f"at {args.target}"
    if changed:
        print(
            f"all services {where}; migrated {changed} of {len(results)} services "
            f"in {perf_counter() - started:.2f} s"
        )
    else:
        print(f"all services {where}; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
