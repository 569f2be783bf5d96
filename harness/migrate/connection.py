"""One synchronous SQLAlchemy connection over asyncpg, for Alembic.

We have no sync PostgreSQL driver, so Alembic gets the sync face of an asyncpg
connection through `AsyncConnection.run_sync`. The event loop that drives it lives in a
thread of its own: callers may be plain synchronous code, or code running inside an
event loop (a pytest-asyncio test, the plugin's worker), and neither may be disturbed.
Running the whole job in that one thread also means every service shares one
connection, so there is one connect (TLS + auth on Neon) per run, not one per service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import NullPool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from harness.errors import HarnessError, MigrationError
from harness.redact import redact_url, register_secret, scrub
from harness.urls import normalize_asyncpg_url

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

    Runs in a fresh thread with its own event loop and returns what `work` returns (or
    raises what it raises).
    """
    remember_password(direct_url)
    url = normalize_asyncpg_url(direct_url)

    async def main() -> T:
        engine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": APPLICATION_NAME}},
        )
        try:
            try:
                connection = await engine.connect()
            except Exception as exc:  # asyncpg/OSError: name the class, never the URL
                raise MigrationError(
                    f"cannot connect to {redact_url(direct_url)}",
                    db_error=describe_exception(exc),
                ) from None
            try:
                return await connection.run_sync(work)
            finally:
                await connection.close()
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cathouse-migrate") as pool:
        return pool.submit(asyncio.run, main()).result()


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
