"""Every environment variable the harness reads, in one table, and the one way to read them.

Settings that a variable can set (NEON_API_KEY, CATHOUSE_PARENT_BRANCH, ...) are read by
`cathouse_harness.config.settings.load_settings` with its precedence and sources; the rest are read here
by the code that needs them. docs/configuration.md's environment table lists the same names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

VARIABLES: dict[str, str] = {
    # settings (cathouse_harness.config.settings.ENV_NAMES maps each to its setting)
    "NEON_API_KEY": "Neon API key; without it the embedded default is used",
    "NEON_API_HOST": "Neon API base URL",
    "NEON_PROJECT_ID": "Neon project",
    "CATHOUSE_PARENT_BRANCH": "branch every session forks from",
    "CATHOUSE_DATABASE": "database name on the branch",
    "CATHOUSE_ROLE": "role name on the branch",
    "CATHOUSE_BRANCH_TTL": "expiry of session branches",
    "CATHOUSE_SCHEMA_ONLY": "fork without the parent's data",
    "CATHOUSE_CONNECTION_LIMIT": "connections all services' pools must fit",
    "CATHOUSE_BACKEND": "neon or embedded",
    "CATHOUSE_HARNESS_HOME": "the harness's home (state, markers, the embedded default)",
    "CATHOUSE_TEMPLATE_REUSE": "fork from a migrated template branch",
    "CATHOUSE_SPARE": "keep a spare fork of the template for the next session (false: none)",
    "CATHOUSE_DIFF_KEPT": "print a kept branch's schema diff against its parent in the summary",
    "CATHOUSE_KEEP_BRANCH": "keep a session's branch: never, on-failure, always",
    "CATHOUSE_LOCAL_STORAGE": "embedded default's storage: memory or disk",
    "CATHOUSE_WORKER_ISOLATION": "an xdist worker's own: database (one fork per run) or branch",
    "CATHOUSE_POSTGRES_BIN": "the embedded default's PostgreSQL: a bin directory, wheel, system or auto",
    # process-level switches
    "CATHOUSE_CONFIG": "a TOML file whose [tool.cathouse_harness] stands in for pyproject.toml's",
    "CATHOUSE_RUN_ID": "names a run's branches (CI jobs)",
    "CATHOUSE_PG_URL": "retired (an external server for the embedded default): read only to refuse it",
    "CATHOUSE_EXTRA_EXTENSIONS": "extensions the local server allows beyond Neon's pinned list (a, b)",
    "CATHOUSE_LOCAL_FAULTS": "fault injection for the local server",
    "CATHOUSE_LOCAL_LATENCY": "the local server's latency profile: `neon` or rtt=S,<operation>=S",
    "CATHOUSE_LOCAL_HOSTS": "endpoint hosts: auto, addresses (127.x.y.z) or names (ep-….local.localhost)",
    "CATHOUSE_PGBOUNCER": "the embedded default's PgBouncer: its binary's path, or off",
    "CATHOUSE_POOLER_MODE": "the embedded default's PgBouncer pool mode: transaction (Neon's) or session",
    "CATHOUSE_LOCAL_ROUTER": "the loopback address of the names-mode router (default 127.0.0.1)",
    "CATHOUSE_DEBUG": "tracebacks from the CLI",
    "MIGRATION_DATABASE_URL": "direct URL for `migrate` when none is given",
    "CI": "set by CI systems: branches are never kept by default",
    "XDG_CACHE_HOME": "where the default home lives",
    "XDG_RUNTIME_DIR": "where in-memory instances go when PostgreSQL runs as us",
    "PGHOST": "libpq's default host: what a migration's connect without one reaches",
    "PGPORT": "libpq's default port, likewise",
    "PGDATABASE": "libpq's default database, likewise",
    "PATH": "handed on to PostgreSQL's and PgBouncer's processes (their only inherited variable)",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "pytest's own: then the plugin brings pytest-asyncio along",
    "PYTEST_XDIST_WORKER": "xdist's: a worker's id, read before its conftests load (env mapping)",
    "PYTEST_XDIST_TESTRUNUID": "xdist's: the run's id, likewise",
    "CATHOUSE_XDIST_OWNER": "set by the plugin for its xdist workers: the run id and owner token",
    "CATHOUSE_XDIST_WORKER_PID": "set by the plugin in an xdist worker: its pid (a nested pytest is none)",
}


def read(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, None when unset or empty. Only names in VARIABLES."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not in cathouse_harness.support.env.VARIABLES")
    value = (os.environ if environ is None else environ).get(name)
    return value or None


@contextmanager
def overridden(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) these variables for the block; put back what was there."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        _put(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            _put(key, value)


def _put(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
