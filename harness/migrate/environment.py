"""What a service's env.py sees while one Alembic command runs on a branch.

The env.py is the user's, written for `cd <service> && alembic upgrade head`. We meet
it where it is instead of asking for edits:

- the current directory is the service's (relative `script_location`, `prepend_sys_path
  = .`, a `.env` or settings file read relative to it all work as they do for the user);
- the branch's direct URL arrives every way an env.py looks for one: `sqlalchemy.url`
  (in the driver form its alembic.ini or env.py uses), `DATABASE_URL`,
  `MIGRATION_DATABASE_URL` and libpq's `PG*` variables, the project's own names mapped in
  `[tool.cathouse_harness.env]` (and the service's `env`), and the shared connection in
  `config.attributes["connection"]` for env.py files that take it;
- Alembic runs in a thread with no event loop, so an async env.py's `asyncio.run()` works;
- modules the command imported from the service's tree are forgotten afterwards: every
  service may have its own package called `app`, and the next service must not get this
  one's;
- no connection can go anywhere but the branch (`cathouse_harness.migrate.guard`);
- the version table is read where the env.py put it: the heads are taken from Alembic's
  own migration context, before and after it runs.

Everything is put back when the command ends: directory, environment, sys.path,
logging configuration.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from cathouse_harness.branching.fingerprint import ServiceSources, service_sources
from cathouse_harness.config.settings import ServiceConfig
from cathouse_harness.db.urls import endpoint_of, url_for_driver
from cathouse_harness.migrate.guard import only_connections_to
from cathouse_harness.migrate.run_memo import remembered
from cathouse_harness.support import env
from cathouse_harness.support.progress import say

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

# Where `run_with_connection` leaves the branch's direct URL on the shared connection.
DIRECT_URL_KEY = "cathouse_harness.direct_url"

_KNOWN_SCHEMES = {
    "postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg",
    "postgresql+psycopg2", "postgresql+pg8000", "postgresql+psycopg_async",
}
_ASYNC_ENV = re.compile(r"async_engine_from_config|create_async_engine|asyncio\.run|\basync def\b")


@dataclass(frozen=True)
class VersionRecord:
    """One `context.run_migrations()` call: where its version table is, heads before/after."""

    table: str
    schema: str | None
    before: tuple[str, ...]
    after: tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # ConfigParser interpolation would eat a %-encoded password


def _raw_ini_url(sources: ServiceSources, section: str = "alembic") -> str | None:
    if sources.ini is None:
        return None
    import configparser

    parser = configparser.RawConfigParser()
    parser.read([sources.ini], encoding="locale")
    return parser.get(section, "sqlalchemy.url", fallback=None)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def driver_scheme(sources: ServiceSources, section: str = "alembic") -> str:
    """The SQLAlchemy scheme this service's env.py expects in `sqlalchemy.url`.

    alembic.ini names it when it holds a real PostgreSQL URL; templates hold a placeholder
    (`driver://…`), and then env.py tells: an async one needs asyncpg, a sync one the
    libpq driver that is installed (psycopg 3, else psycopg2). Read once per migration
    run (`cathouse_harness.migrate.run_memo`)."""
    return remembered(("driver_scheme", sources, section), lambda: _driver_scheme(sources, section))


def _driver_scheme(sources: ServiceSources, section: str) -> str:
    raw = (_raw_ini_url(sources, section) or "").strip()
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme in _KNOWN_SCHEMES:
        return "postgresql" if scheme == "postgres" else scheme
    try:
        source = sources.env_py.read_text(encoding="utf-8", errors="replace")
    except OSError:
        source = ""
    if _ASYNC_ENV.search(source):
        return "postgresql+asyncpg"
    if _installed("psycopg"):
        return "postgresql+psycopg"
    return "postgresql+psycopg2" if _installed("psycopg2") else "postgresql"


def multidb_names(sources: ServiceSources) -> list[str]:
    """The `databases = a, b` of a multidb alembic.ini (Alembic's `multidb` template)."""
    return list(remembered(("multidb_names", sources), lambda: tuple(_multidb_names(sources))))


def _multidb_names(sources: ServiceSources) -> list[str]:
    if sources.ini is None:
        return []
    import configparser

    parser = configparser.RawConfigParser()
    parser.read([sources.ini], encoding="locale")
    value = parser.get("alembic", "databases", fallback="")
    return [name.strip() for name in value.split(",") if name.strip()]


def _with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def alembic_config(service: ServiceConfig, connection: Connection | None = None,
                   *, url: str | None = None) -> Config:
    """Alembic's Config for `service`, as `alembic` would build it in the service's
    directory; with `url`, every URL in it points at that (direct) branch URL."""
    from alembic.config import Config

    sources = service_sources(service)
    config = Config(
        str(sources.ini) if sources.ini else None,
        toml_file=str(sources.toml) if sources.toml else None,
    )
    # Absolute, so that reading the revisions does not depend on the current directory.
    config.set_main_option("script_location", _escape(str(sources.script_dir)))
    # env.py conventions the harness offers (the example's env.py honours all three)
    config.attributes["configure_logger"] = False
    config.attributes["transaction_per_migration"] = True
    config.attributes["service"] = service.name
    config.attributes["schema"] = service.schema
    if connection is not None:
        config.attributes["connection"] = connection
        url = url or connection.info.get(DIRECT_URL_KEY)
    if url is not None:
        config.set_main_option("sqlalchemy.url", _escape(url_for_driver(url, driver_scheme(sources))))
        for name in multidb_names(sources):
            # Every database of a multidb setup is one branch; each gets a schema of its
            # own (named after it), so their version tables and objects stay apart.
            engine_url = url_for_driver(url, driver_scheme(sources, name))
            config.set_section_option(name, "sqlalchemy.url", _escape(_with_search_path(engine_url, name)))
    return config


def script_directory(service: ServiceConfig) -> ScriptDirectory:
    """Alembic's view of the service's revisions (parsed lazily, on first use; one per
    migration run, see `cathouse_harness.migrate.run_memo`)."""
    return remembered(("script_directory", service), lambda: _script_directory(service))


def _script_directory(service: ServiceConfig) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(service))
    if script.version_locations:
        # Alembic takes relative version_locations from the working directory when it
        # reads them (lazily); ours is not the service's outside a command, so they go
        # in as the absolute paths they name from there.
        script.version_locations = [str(d) for d in service_sources(service).version_dirs]
    return script


@contextmanager
def _recording_heads(records: list[VersionRecord], service: str) -> Iterator[None]:
    from alembic.runtime.environment import EnvironmentContext

    original = EnvironmentContext.run_migrations

    def run_migrations(self: EnvironmentContext, **kw: Any) -> None:
        context = self.get_context()
        before = tuple(sorted(context.get_current_heads()))
        _announce_steps(context, service)
        original(self, **kw)
        records.append(VersionRecord(
            table=context.version_table, schema=context.version_table_schema,
            before=before, after=tuple(sorted(context.get_current_heads())),
        ))

    EnvironmentContext.run_migrations = run_migrations  # type: ignore[method-assign]
    try:
        yield
    finally:
        EnvironmentContext.run_migrations = original  # type: ignore[method-assign]


class StepWatcher(Protocol):
    """Told of each revision a command applies (`cathouse_harness.rehearsal` measures them)."""

    def starting(self, service: str, revisions: tuple[str, ...], doc: str | None) -> None:
        """Before the revision's transaction begins."""

    def applied(self, service: str, revisions: tuple[str, ...], connection: Any) -> None:
        """After its upgrade ran, still inside its transaction, on the migration's
        own connection (what it locked and wrote is visible there until the commit)."""


_watcher: ContextVar[StepWatcher | None] = ContextVar("cathouse_step_watcher", default=None)


@contextmanager
def watching_steps(watcher: StepWatcher) -> Iterator[None]:
    """Tell `watcher` of every revision the commands run in this context apply."""
    token = _watcher.set(watcher)
    try:
        yield
    finally:
        _watcher.reset(token)


def _announce_steps(context: Any, service: str) -> None:
    """Each revision says itself before it runs (`support.progress`): the step a slow
    migration is on. Alembic has no public hook before a step (`on_version_apply` comes
    after), so its steps' iterator is wrapped; without it the service alone is said."""
    steps = getattr(context, "_migrations_fn", None)
    if steps is None:
        return
    watcher = _watcher.get()

    def announced(heads: Any, ctx: Any) -> Iterator[Any]:
        for step in steps(heads, ctx):
            say(f"migrating {service} {_step_text(step)}")
            if watcher is not None and getattr(step, "is_upgrade", True):
                watcher.starting(service, _step_ids(step), getattr(step, "doc", None))
            yield step

    context._migrations_fn = announced
    if watcher is not None:
        def applied(*, ctx: Any, step: Any, **_: Any) -> None:
            if step.is_upgrade:
                watcher.applied(service, tuple(step.up_revision_ids), ctx.connection)

        # Alembic calls these inside the step's transaction, before it commits
        context.on_version_apply_callbacks = (*context.on_version_apply_callbacks, applied)


def _step_ids(step: Any) -> tuple[str, ...]:
    return tuple(getattr(step, "to_revisions_no_deps", ()) or ())


def _step_text(step: Any) -> str:
    """`to 51095109510a (a slow revision)`, or `down from …` for a downgrade."""
    upgrade = getattr(step, "is_upgrade", True)
    ids = getattr(step, "to_revisions_no_deps" if upgrade else "from_revisions_no_deps", ())
    doc = getattr(step, "doc", None)
    where = ("to " if upgrade else "down from ") + (", ".join(ids) or "base")
    return f"{where} ({doc})" if doc else where


def _branch_variables(url: str, scheme: str) -> dict[str, str]:
    parts = urlsplit(url)
    query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
    service_url = url_for_driver(url, scheme)
    found = {
        "DATABASE_URL": service_url,
        "MIGRATION_DATABASE_URL": service_url,
        "PGHOST": parts.hostname or "",
        "PGPORT": str(parts.port or 5432),
        "PGDATABASE": unquote(parts.path.lstrip("/")),
        "PGUSER": unquote(parts.username or ""),
        "PGPASSWORD": unquote(parts.password or ""),
        "PGSSLMODE": unquote(query.get("sslmode") or query.get("ssl") or ""),
        # asyncpg's env.py gets the URL without it (SQLAlchemy cannot pass it on)
        "PGSSLROOTCERT": unquote(query.get("sslrootcert") or ""),
    }
    return {key: value for key, value in found.items() if value}


def _environment(values: dict[str, str]) -> AbstractContextManager[None]:
    # Every PG* variable goes, not just the ones we set: a PGSERVICE or PGOPTIONS of the
    # shell must not steer the env.py elsewhere.
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PG")}
    return env.overridden({**cleared, **values})


def _is_installed_code(path: str) -> bool:
    return "site-packages" in path or "dist-packages" in path


@contextmanager
def isolated_imports(directory: Path) -> Iterator[None]:
    """Put back sys.path and forget the modules the command imported from the service
    (or from a directory its `prepend_sys_path` added), as a process of its own would."""
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    _forget_relative_finders()  # one cached for `.` elsewhere would look in that directory
    try:
        yield
    finally:
        added_roots = {
            os.path.realpath(os.path.join(directory, p)) for p in sys.path if p not in path_before
        }
        roots = {os.path.realpath(directory), *added_roots}
        for name in set(sys.modules) - modules_before:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            real = os.path.realpath(file) if file else ""
            if real and not _is_installed_code(real) and any(
                real == root or real.startswith(root + os.sep) for root in roots
            ):
                del sys.modules[name]
        sys.path[:] = path_before
        _forget_relative_finders()


def _forget_relative_finders() -> None:
    # `.` and other relative sys.path entries are cached per string, not per directory
    for key in [k for k in sys.path_importer_cache if not os.path.isabs(k)]:
        del sys.path_importer_cache[key]


@contextmanager
def in_directory(directory: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo what an env.py's `fileConfig` would do to the process's logging (levels,
    root handlers, disabled loggers)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    disabled = {
        name: logger.disabled
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled = disabled.get(name, False)


@contextmanager
def service_command(service: ServiceConfig, url: str) -> Iterator[list[VersionRecord]]:
    """The surroundings of one Alembic command of `service` on the branch at `url`
    (its direct URL). Yields the list that receives each run's version records."""
    sources = service_sources(service)
    records: list[VersionRecord] = []
    with ExitStack() as stack:
        stack.enter_context(preserved_logging())
        stack.enter_context(isolated_imports(sources.directory))
        stack.enter_context(in_directory(sources.directory))
        scheme = driver_scheme(sources)
        # the project's own names too ([tool.cathouse_harness.env] and the service's own),
        # from the direct URL, `{url}` in the form this env.py takes
        own = service.env.render(url, direct_url=url, driver=scheme)
        stack.enter_context(_environment({**_branch_variables(url, scheme), **own}))
        stack.enter_context(only_connections_to(endpoint_of(url), sources.env_py, service.name))
        stack.enter_context(_recording_heads(records, service.name))
        yield records


def version_locations(records: list[VersionRecord]) -> str:
    """`auth.alembic_version` (or several, for an env.py that runs more than once)."""
    return ", ".join(sorted({f"{r.schema}.{r.table}" if r.schema else r.table for r in records}))
