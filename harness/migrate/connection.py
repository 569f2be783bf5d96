"""One synchronous SQLAlchemy connection to the branch, for Alembic.

Alembic is synchronous and so are most env.py files; an async one calls `asyncio.run()`,
which fails inside a running event loop. So the work runs in a plain thread of its own
(callers may be sync code, a worker thread, or code inside an event loop: none is
disturbed) over psycopg, a synchronous driver. Every service shares that one
connection when its env.py takes it (one connect, TLS and auth, per run); an env.py
that opens its own finds the branch's URL left on the connection (`DIRECT_URL_KEY`).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from cathouse_harness.db.urls import libpq_url
from cathouse_harness.errors import HarnessError, MigrationError
from cathouse_harness.migrate.environment import DIRECT_URL_KEY
from cathouse_harness.support.interrupt import stop_all, stoppable
from cathouse_harness.support.redact import redact_url, register_secret, scrub
from sqlalchemy import NullPool, create_engine
from sqlalchemy.engine import Connection

T = TypeVar("T")

APPLICATION_NAME = "cathouse-harness-migrate"


def remember_password(url: str) -> None:
    """Register the URL's password (raw and encoded) so no message can show it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))


def run_with_connection(direct_url: str, work: Callable[[Connection], T]) -> T:
    """Connect to `direct_url`, call `work(connection)` with a sync Connection, close.

    Runs in a fresh thread with no event loop and returns what `work` returns (or
    raises what it raises).
    """
    remember_password(direct_url)
    url = libpq_url(direct_url, "postgresql+psycopg")

    def main() -> T:
        engine = create_engine(
            url, poolclass=NullPool, connect_args={"application_name": APPLICATION_NAME}
        )
        try:
            try:
                connection = engine.connect()
            except Exception as exc:  # the driver's text may hold the URL: name the class
                raise MigrationError(
                    f"cannot connect to {redact_url(direct_url)}",
                    db_error=describe_exception(exc),
                ) from None
            connection.info[DIRECT_URL_KEY] = direct_url
            raw = connection.connection.dbapi_connection
            # Ctrl-C must not wait for the statement running now (stop_all)
            with stoppable(lambda: raw.cancel_safe(timeout=1.0)), connection:  # type: ignore[union-attr]
                return work(connection)
        finally:
            engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cathouse-migrate") as pool:
        # in the caller's context: a migration run's memo (cathouse_harness.migrate.run_memo) reaches it
        future = pool.submit(contextvars.copy_context().run, main)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # Ctrl-C: the pool's exit would wait for the statement
                stop_all()
            raise


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrappers, when there is one."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        exc = orig
    # SQLAlchemy's asyncpg adapter error wraps asyncpg's exception as __cause__
    cause = exc.__cause__
    if cause is not None and getattr(cause, "sqlstate", None):
        return cause
    return exc


def sqlstate_of(exc: BaseException) -> str | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (current, getattr(current, "orig", None)):
            code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if isinstance(code, str) and code:
                return code
        current = current.__cause__ or current.__context__
    return None


def describe_exception(exc: BaseException) -> str:
    """One line: the driver's error class, SQLSTATE and first message line, scrubbed."""
    if isinstance(exc, HarnessError):
        return exc.message
    root = _root_cause(exc)
    message = str(getattr(root, "message", "") or root).strip()
    first = message.splitlines()[0].strip() if message else ""
    # SQLAlchemy's own text ends with "[SQL: …]" and a link; the first line suffices
    if first.startswith("(") and ") " in first:
        first = first.split(") ", 1)[1]
    code = sqlstate_of(exc)
    name = type(root).__name__
    head = f"{name} [{code}]" if code else name
    return scrub(f"{head}: {first}" if first else head)
