"""While a service migrates, connections may go to the branch and nowhere else.

A user's env.py decides where it connects. We hand it the branch in every way we know
(see `cathouse_harness.migrate.environment`), but an env.py that builds its URL from a variable
of its own, or loads a `.env` over ours, would migrate whatever database that names.
So for the length of each Alembic command every way of opening a PostgreSQL connection
that we know of is checked before it reaches the network: SQLAlchemy's `do_connect`
event (any dialect) and the connect functions of asyncpg, psycopg and psycopg2 (for
env.py files that use a driver directly). A connection to anything but the branch's
direct endpoint raises `ForeignDatabaseRefused`, so no statement is ever sent there.

The guard is process-wide, not per thread: an env.py may connect from a thread or an
event loop of its own. So commands in one process take turns (a lock held for the
length of each), and there is one allowed endpoint at a time.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cathouse_harness.db.urls import Endpoint
from cathouse_harness.errors import SafetyError
from cathouse_harness.support import env
from cathouse_harness.support.redact import redact_url

README_SECTION = "README 'Using it on your project'"


class ForeignDatabaseRefused(SafetyError):
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
            f"config.attributes['connection'] ({README_SECTION})",
        )


# What SQLAlchemy's str(url) and repr(url) put where the password was.
MASKED_PASSWORD = "***"


class MaskedPasswordRefused(SafetyError):
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


def _check_password(password: Any) -> None:
    """Refuse SQLAlchemy's mask as a password, before the server answers with "password
    authentication failed" (a branch's password, generated, is never the mask)."""
    state = _active
    if state is None or password != MASKED_PASSWORD:
        return
    raise MaskedPasswordRefused(state[1], state[2])


_lock = threading.RLock()
_active: tuple[Endpoint, Path | None, str | None] | None = None


def _describe(host: str, port: Any, database: str, dsn: str | None) -> str:
    if dsn and "://" in dsn:
        return redact_url(dsn)
    return f"{host or '(default host)'}:{port or 5432}/{database or '(default database)'}"


def _check(host: Any, port: Any, database: Any, dsn: str | None = None) -> None:
    state = _active
    if state is None:
        return
    allowed, env_py, service = state
    # what the driver falls back to for what the call leaves out: libpq's variables (set
    # to the branch for the command), as asyncpg and libpq both read them
    host = host or env.read("PGHOST")
    port = port or env.read("PGPORT")
    database = database or env.read("PGDATABASE")
    if isinstance(host, list | tuple):  # asyncpg and libpq accept several hosts
        host = ",".join(str(h) for h in host)
    if isinstance(port, list | tuple):
        port = ",".join(str(p) for p in port)
    host_s = str(host or "").lower()
    try:
        port_i = int(port) if port not in (None, "") else 5432
    except (TypeError, ValueError):
        port_i = -1
    database_s = str(database or "")
    if (host_s, port_i, database_s) != (allowed.host, allowed.port, allowed.database):
        raise ForeignDatabaseRefused(env_py, _describe(host_s, port, database_s, dsn), allowed, service)


def _check_url_or_params(dsn: str | None, params: dict[str, Any], *, db_key: str) -> None:
    """asyncpg-style call: a URL and/or keyword arguments (keywords win, as in asyncpg)."""
    host, port, database = params.get("host"), params.get("port"), params.get(db_key)
    password = params.get("password")
    if dsn and "://" in dsn:
        from urllib.parse import urlsplit

        parts = urlsplit(dsn)
        password = password or (unquote(parts.password) if parts.password else None)
        host = host or parts.hostname
        try:
            port = port or parts.port
        except ValueError:
            port = "?"
        database = database or unquote(parts.path.lstrip("/"))
    _check(host, port, database, dsn)
    _check_password(password)


def _check_conninfo(conninfo: str, params: dict[str, Any]) -> None:
    """libpq-style call (psycopg, psycopg2): a conninfo string or URL plus keywords."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        merged: dict[str, Any] = dict(conninfo_to_dict(conninfo or "", **params))
    except ImportError:
        merged = dict(params)
        if conninfo and "://" in conninfo:
            _check_url_or_params(conninfo, params, db_key="dbname")
            return
    _check(merged.get("host"), merged.get("port"),
           merged.get("dbname") or merged.get("database"), conninfo)
    _check_password(merged.get("password"))


def _sqlalchemy_listener(dialect: Any, conn_rec: Any, cargs: tuple[Any, ...],
                         cparams: dict[str, Any]) -> None:
    dsn = cargs[0] if cargs and isinstance(cargs[0], str) else cparams.get("dsn")
    if dsn and "://" not in str(dsn):
        _check_conninfo(str(dsn), {k: v for k, v in cparams.items() if k != "dsn"})
        return
    _check_url_or_params(dsn, cparams, db_key="dbname" if "dbname" in cparams else "database")


def _wrap(check: Callable[..., None], original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    return guarded


def _asyncpg_check(dsn: str | None = None, *args: Any, **kwargs: Any) -> None:
    _check_url_or_params(dsn, kwargs, db_key="database")


def _libpq_check(conninfo: str | None = None, *args: Any, **kwargs: Any) -> None:
    params = {k: v for k, v in kwargs.items()
              if k not in ("connection_factory", "cursor_factory", "autocommit",
                           "prepare_threshold", "row_factory", "context", "async_")}
    _check_conninfo(conninfo or "", params)


def _classmethod_check(cls: Any, conninfo: str = "", *args: Any, **kwargs: Any) -> None:
    _libpq_check(conninfo, **kwargs)


# (module, owner attribute path, check): every driver entry point env.py files use.
_DRIVER_HOOKS: tuple[tuple[str, str, Callable[..., None]], ...] = (
    ("asyncpg", "connect", _asyncpg_check),
    ("asyncpg.connection", "connect", _asyncpg_check),
    ("psycopg2", "connect", _libpq_check),
    ("psycopg", "connect", _libpq_check),
)


@contextmanager
def _driver_hooks() -> Iterator[None]:
    patched: list[tuple[Any, str, Any]] = []
    try:
        for module_name, attribute, check in _DRIVER_HOOKS:
            if importlib.util.find_spec(module_name.split(".")[0]) is None:
                continue
            module = importlib.import_module(module_name)
            original = getattr(module, attribute, None)
            if original is None:
                continue
            setattr(module, attribute, _wrap(check, original))
            patched.append((module, attribute, original))
        # psycopg's classes connect through their own classmethods too
        if importlib.util.find_spec("psycopg") is not None:
            import psycopg

            for cls in (psycopg.Connection, psycopg.AsyncConnection):
                original = cls.__dict__["connect"]
                function = original.__func__

                def guarded(klass: Any, *args: Any, _function: Any = function, **kwargs: Any) -> Any:
                    _classmethod_check(klass, *args, **kwargs)
                    return _function(klass, *args, **kwargs)

                cls.connect = classmethod(guarded)  # type: ignore[method-assign,assignment]
                patched.append((cls, "connect", original))
        yield
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


@contextmanager
def only_connections_to(allowed: Endpoint, env_py: Path | None,
                        service: str | None = None) -> Iterator[None]:
    """For the length of the block, refuse every new connection that is not to `allowed`.

    Connections opened before the block (the runner's shared one) are not affected.
    """
    global _active
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    with _lock:
        outer = _active
        _active = (allowed, env_py, service)
        if outer is None:
            event.listen(Engine, "do_connect", _sqlalchemy_listener)
        try:
            if outer is None:
                with _driver_hooks():
                    yield
            else:
                yield
        finally:
            if outer is None:
                event.remove(Engine, "do_connect", _sqlalchemy_listener)
            _active = outer


def refused_in(exc: BaseException) -> SafetyError | None:
    """The refusal behind `exc` (SQLAlchemy and drivers may wrap or chain it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ForeignDatabaseRefused | MaskedPasswordRefused):
            return current
        orig = getattr(current, "orig", None)
        if isinstance(orig, ForeignDatabaseRefused | MaskedPasswordRefused):
            return orig
        current = current.__cause__ or current.__context__
    return None
