"""Roles and databases on the data plane's cluster: a branch is a physical database
copied from its parent's (fenced, `cathouse_harness.local.fencing`), and PgBouncer is told about
every role and database that appears or goes away."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
from cathouse_harness.db.quoting import quote_ident, quote_literal
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.fencing import Fencer
from cathouse_harness.local.pgbouncer import PgBouncer
from cathouse_harness.local.postgres import scram_verifier, verifier_matches

# how often a copy is tried when a session slips onto the template just before it
_COPY_ATTEMPTS = 3


async def list_databases(pool: asyncpg.Pool) -> list[str]:
    """The cluster's databases, `postgres` and templates left out."""
    rows = await pool.fetch(
        "SELECT datname FROM pg_database"
        " WHERE datistemplate = false AND datname <> 'postgres' ORDER BY datname"
    )
    return [row["datname"] for row in rows]


@dataclass
class Databases:
    """Creating, copying, replacing and dropping databases, and keeping roles."""

    pool: asyncpg.Pool
    fencer: Fencer
    pgbouncer: PgBouncer | None
    # the superuser's DSN for a database (the schema-only copy connects to it)
    admin_dsn: Callable[[str], str]
    # where to look when PostgreSQL refuses (an error's hint)
    where: str
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def error(self, what: str, exc: BaseException) -> LocalServerError:
        detail = exc.args[0] if isinstance(exc, asyncpg.PostgresError) and exc.args else type(exc).__name__
        return LocalServerError(f"{what}: {detail}", hint=self.where)

    @contextlib.asynccontextmanager
    async def _serialised(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    # --- roles -----------------------------------------------------------------------

    async def ensure_role(self, role: str, password: str) -> None:
        pool = self.pool
        try:
            row = await pool.fetchrow(
                "SELECT rolpassword, rolcreatedb FROM pg_authid WHERE rolname = $1", role
            )
            # CREATEDB as Neon's roles have it: a client copies the database it is on
            # over SQL from its own session (`cathouse_harness.local.branch_sql`)
            if row is None:
                verifier = scram_verifier(password)
                await pool.execute(
                    f"CREATE ROLE {quote_ident(role)} LOGIN CREATEDB PASSWORD {quote_literal(verifier)}"
                )
            elif not verifier_matches(row["rolpassword"], password) or not row["rolcreatedb"]:
                verifier = scram_verifier(password)
                await pool.execute(
                    f"ALTER ROLE {quote_ident(role)} LOGIN CREATEDB PASSWORD {quote_literal(verifier)}"
                )
            else:
                verifier = str(row["rolpassword"])
        except asyncpg.PostgresError as exc:
            raise self.error(f"cannot create role {role}", exc) from None
        if self.pgbouncer is not None:  # PgBouncer keeps its own list of users
            await self.pgbouncer.set_user(role, verifier)

    # --- databases -------------------------------------------------------------------

    async def exists(self, physical: str) -> bool:
        return bool(await self.pool.fetchval("SELECT true FROM pg_database WHERE datname = $1", physical))

    async def create(
        self,
        physical: str,
        *,
        owner: str,
        template: str | None = None,
        schema_only: bool = False,
        issued: Callable[[], None] | None = None,
    ) -> None:
        """Create `physical` (a copy of `template`); `issued()` is called as the CREATE
        DATABASE goes to PostgreSQL, after the checks that precede it. New connections
        to `physical` wait until it is made (or its create failed)."""
        # A branch's endpoint listens before its copy is made (the create answers first);
        # a client that connects at once waits, as on Neon while the compute starts,
        # rather than finding no database.
        self.fencer.fences.hold(physical)
        try:
            await self._create_announced(physical, owner=owner, template=template,
                                         schema_only=schema_only, issued=issued)
        finally:
            self.fencer.fences.release(physical)

    async def _create_announced(
        self, physical: str, *, owner: str, template: str | None, schema_only: bool,
        issued: Callable[[], None] | None,
    ) -> None:
        async with self._serialised():
            # PgBouncer's list of databases is updated while the copy runs (no reload:
            # its fallback entry reaches a new database the moment a client asks).
            announce = asyncio.create_task(self._changed(added=physical))
            try:
                await self._create(physical, owner=owner, template=template, issued=issued)
                if schema_only and template is not None:
                    await self._truncate_data(physical)
            except BaseException:
                await asyncio.gather(announce, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._changed(removed=physical)
                raise
            await announce

    async def _create(
        self, physical: str, *, owner: str, template: str | None, issued: Callable[[], None] | None = None
    ) -> None:
        sql = f"CREATE DATABASE {quote_ident(physical)} OWNER {quote_ident(owner)}"
        if template is None:
            if issued is not None:
                issued()
            try:
                await self.pool.execute(sql + " STRATEGY FILE_COPY")
            except asyncpg.PostgresError as exc:
                raise self.error(f"cannot create database {physical}", exc) from None
            return
        if template == physical:
            raise LocalServerError(f"cannot copy database {physical} onto itself")
        sql += f" TEMPLATE {quote_ident(template)} STRATEGY FILE_COPY"
        async with self.fencer.fence(template, idle_shortcut=True) as tighten:
            if issued is not None:
                issued()
            # Someone may slip in over PostgreSQL's own port between our checks and the copy.
            for attempt in range(_COPY_ATTEMPTS):
                try:
                    await self.pool.execute(sql)
                    return
                except asyncpg.ObjectInUseError as exc:
                    if attempt == _COPY_ATTEMPTS - 1:
                        raise self.error(f"cannot copy database {template}", exc) from None
                    await tighten()
                    await self.fencer.end_sessions(template)
                except asyncpg.PostgresError as exc:
                    raise self.error(f"cannot copy database {template} to {physical}", exc) from None

    async def _truncate_data(self, physical: str) -> None:
        """Keep the schema (and Alembic's version rows), drop every data row."""
        conn = await asyncpg.connect(self.admin_dsn(physical))
        try:
            rows = await conn.fetch(
                """
                SELECT format('%I.%I', n.nspname, c.relname) AS name
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname NOT LIKE 'pg\\_%'
                  AND c.relname <> 'alembic_version'
                  AND NOT EXISTS (
                      SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
                """
            )
            if rows:
                await conn.execute("TRUNCATE " + ", ".join(row["name"] for row in rows) + " RESTART IDENTITY")
        except asyncpg.PostgresError as exc:
            raise self.error(f"cannot empty database {physical}", exc) from None
        finally:
            await conn.close()

    async def end_sessions(self, physical: str, *, keep: int) -> None:
        """End every session on `physical` but backend `keep` (and wait until they are gone)."""
        try:
            await self.fencer.end_sessions(physical, keep=keep)
        except asyncpg.PostgresError as exc:
            raise self.error(f"cannot end the sessions on database {physical}", exc) from None

    async def announce(self, physical: str) -> None:
        """A database made outside `create` (over a client's own session) exists now."""
        await self._changed(added=physical)

    async def set_owner(self, physical: str, owner: str) -> None:
        try:
            await self.pool.execute(f"ALTER DATABASE {quote_ident(physical)} OWNER TO {quote_ident(owner)}")
        except asyncpg.PostgresError as exc:
            raise self.error(f"cannot change the owner of database {physical}", exc) from None

    async def drop(self, physical: str) -> None:
        async with self._serialised():
            try:
                await self.pool.execute(f"DROP DATABASE IF EXISTS {quote_ident(physical)} WITH (FORCE)")
            except asyncpg.PostgresError as exc:
                raise self.error(f"cannot drop database {physical}", exc) from None
            await self._changed(removed=physical)

    async def replace(self, physical: str, *, template: str, owner: str) -> None:
        """Restore: `physical` becomes a fresh copy of `template`; endpoints keep working."""
        staging = f"{physical[:40]}_restore_{secrets.token_hex(4)}"
        async with self._serialised():
            await self._create(staging, owner=owner, template=template)
            try:
                async with self.fencer.fence(physical):
                    await self.pool.execute(f"DROP DATABASE IF EXISTS {quote_ident(physical)} WITH (FORCE)")
                    await self.pool.execute(
                        f"ALTER DATABASE {quote_ident(staging)} RENAME TO {quote_ident(physical)}"
                    )
            except asyncpg.PostgresError as exc:
                with contextlib.suppress(asyncpg.PostgresError):
                    await self.pool.execute(f"DROP DATABASE IF EXISTS {quote_ident(staging)} WITH (FORCE)")
                raise self.error(f"cannot restore database {physical}", exc) from None

    async def _changed(self, *, added: str | None = None, removed: str | None = None) -> None:
        """PgBouncer lists every database: tell it about one that appeared or went away
        (a restore renames its copy onto the old name, so the list stays the same)."""
        if self.pgbouncer is None:
            return
        wanted = set(self.pgbouncer.databases())
        if added is not None:
            wanted.add(added)
        if removed is not None:
            wanted.discard(removed)
        await self.pgbouncer.set_databases(wanted)
