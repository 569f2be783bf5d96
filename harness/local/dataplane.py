"""The data plane of the embedded default: databases as branches, endpoints as proxies.

The control plane (the local Neon API) decides what exists; this module makes it real
on one PostgreSQL cluster: a branch is a physical database copied from its parent's, an
endpoint is a pair of loopback listeners (direct, pooled) that map the logical database
name a client asks for to the branch's physical database.

Copies are fenced: PostgreSQL copies a template's files while its
sessions may still write, and commit status is cluster-wide, so a transaction open
during the copy would surface in the child once it commits. Before a copy we hold new
connections to the template, let open transactions finish for a short while, end what
remains, copy, then let the held connections through.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from harness.errors import LocalServerError
from harness.local.hosts import DEFAULT_PORT, loopback_addresses
from harness.local.pgbouncer import PgBouncer, find_pgbouncer
from harness.local.postgres import (
    Cluster,
    OsUser,
    cluster_root,
    prepare_root,
    resolve_install,
    resolve_os_user,
    scram_verifier,
    verifier_matches,
)
from harness.local.proxy import EndpointProxy, Fences, Gate, Upstream
from harness.local.tls import TlsMaterial, server_material
from harness.log import get_logger
from harness.sql import quote_ident, quote_literal

log = get_logger("local.dataplane")

# How long a fence lets open transactions on the template finish before ending them.
DEFAULT_FENCE_TIMEOUT = 2.0
_POLL = 0.005
_OTHER_SESSIONS = "SELECT {what} FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


async def _rollback_only(connection: asyncpg.Connection) -> None:
    """The admin pool's reset. asyncpg's own sends RESET ALL, UNLISTEN and the like on
    every release: a round trip after each query, which the next query on that connection
    waits for. Admin queries change no session state; a transaction an error left open is
    still rolled back."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


@dataclass(frozen=True)
class EndpointAddress:
    endpoint_id: str
    host: str
    direct_port: int
    pooled_port: int
    pooled_via_pgbouncer: bool
    tls: bool
    # the CA a client verifies the endpoint with (`sslrootcert`); None without TLS
    ca_file: str | None = None
    # the endpoint's own loopback address, listening on 5432 (`harness.local.hosts`)
    host_address: str | None = None


class DataPlane:
    """Databases and endpoint listeners on the embedded (or an external) PostgreSQL."""

    def __init__(
        self,
        home: Path,
        *,
        storage: Literal["memory", "disk"] = "memory",
        external_pg_url: str | None = None,
        fence_timeout: float = DEFAULT_FENCE_TIMEOUT,
    ) -> None:
        self.home = Path(home)
        self.storage = storage
        self.fence_timeout = fence_timeout
        self._external_url = external_pg_url
        self._cluster: Cluster | None = None
        self._runtime: Path | None = None
        self._user: OsUser | None = None
        self._pool: asyncpg.Pool | None = None
        self._server_version = ""
        self._fences = Fences()
        self._endpoints: dict[str, EndpointProxy] = {}
        self._lock: asyncio.Lock | None = None
        self._started = False
        self._pg_host = "127.0.0.1"
        self._pg_port = 0
        self._tls: TlsMaterial | None = None
        self._pgbouncer: PgBouncer | None = None
        self.pgbouncer_problem: str | None = None
        # why endpoints have no loopback address of their own on 5432, if they have not
        self.host_problem: str | None = None
        self.timings: dict[str, float] = {}
        # called when a client connects to or leaves an endpoint (the control plane's touch)
        self.on_activity: Callable[[], None] | None = None

    # --- life cycle ----------------------------------------------------------------

    @property
    def cluster_dir(self) -> Path | None:
        """Where this data plane keeps its files (cluster, certificate, PgBouncer).

        With an external server only the certificate and PgBouncer live there. None
        before start().
        """
        return self._runtime

    @property
    def log_path(self) -> Path | None:
        return self._cluster.paths.log_file if self._cluster else None

    def _where(self) -> str:
        return f"see {self.log_path}" if self.log_path else "see the PostgreSQL server's log"

    async def start(self) -> None:
        if self._started:
            return
        self._lock = asyncio.Lock()
        started = time.perf_counter()
        if self._external_url:
            parts = urlsplit(self._external_url)
            self._pg_host = parts.hostname or "127.0.0.1"
            self._pg_port = parts.port or 5432
            admin = self._external_url
        else:
            self._user = await asyncio.to_thread(resolve_os_user)
            install = await asyncio.to_thread(resolve_install, self._user)
            root = cluster_root(self.home, self.storage, self._user)
            self._cluster = Cluster(
                root, storage=self.storage, user=self._user, install=install, home=self.home
            )
            warm = await self._cluster.start()
            self.timings["attach" if warm else "cold_start"] = time.perf_counter() - started
            self.timings.update(self._cluster.timings)
            self._pg_port = self._cluster.port
            admin = self._cluster.superuser_dsn()
        try:
            self._pool = await asyncpg.create_pool(
                admin, min_size=1, max_size=4, command_timeout=120, reset=_rollback_only
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise LocalServerError(
                f"cannot connect to PostgreSQL as superuser ({type(exc).__name__})",
                hint=self._where(),
            ) from None
        self._server_version = str(await self._pool.fetchval("SHOW server_version"))
        await self._start_extras()
        self._started = True
        self.timings["start_total"] = time.perf_counter() - started

    def _runtime_dir(self) -> Path:
        if self._cluster is not None:
            self._runtime = self._cluster.paths.root
            return self._runtime
        self._user = self._user or resolve_os_user()
        self._runtime = prepare_root(cluster_root(self.home, self.storage, self._user), self._user)
        return self._runtime

    async def _start_extras(self) -> None:
        """TLS and PgBouncer; both optional, both degrade to plain direct forwarding."""
        runtime = await asyncio.to_thread(self._runtime_dir)
        # in the home, not beside the cluster: the CA's key must stay in the 0700 home
        self._tls = await asyncio.to_thread(server_material, self.home / "tls")
        binary = find_pgbouncer()
        if binary is None:
            self.pgbouncer_problem = "pgbouncer is not installed"
            return
        assert self._user is not None
        bouncer = PgBouncer(
            binary,
            runtime / "pgbouncer",
            user=self._user,
            pg_host=self._pg_host,
            pg_port=self._pg_port,
        )
        try:
            await bouncer.start(await self.list_databases())
        except LocalServerError as exc:
            await bouncer.stop()
            self.pgbouncer_problem = str(exc)
            log.warning("pooled endpoints bypass PgBouncer: %s", exc)
            return
        self._pgbouncer = bouncer
        self.pgbouncer_problem = None

    async def stop(self, *, stop_postgres: bool = True) -> None:
        for endpoint_id in list(self._endpoints):
            await self.close_endpoint(endpoint_id)
        if self._pgbouncer is not None:
            await self._pgbouncer.stop()
            self._pgbouncer = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)
            self._pool = None
        if stop_postgres and self._cluster is not None:
            await self._cluster.stop()
        if self._cluster is not None:
            self._cluster.release()
        self._started = False

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients verify the endpoints with; None without TLS."""
        return self._tls.ca_file if self._tls is not None else None

    @property
    def pgbouncer_available(self) -> bool:
        return self._pgbouncer is not None

    @property
    def server_version(self) -> str:
        return self._server_version

    def admin_dsn(self, database: str = "postgres") -> str:
        if self._cluster is not None:
            return self._cluster.superuser_dsn(database)
        if self._external_url:
            parts = urlsplit(self._external_url)
            return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))
        raise LocalServerError("the data plane is not started")

    def _admin(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LocalServerError("the data plane is not started")
        return self._pool

    @contextlib.asynccontextmanager
    async def _serialised(self) -> AsyncIterator[None]:
        assert self._lock is not None, "start() first"
        async with self._lock:
            yield

    def _error(self, what: str, exc: BaseException) -> LocalServerError:
        detail = exc.args[0] if isinstance(exc, asyncpg.PostgresError) and exc.args else type(exc).__name__
        return LocalServerError(f"{what}: {detail}", hint=self._where())

    # --- roles and databases ---------------------------------------------------------

    async def ensure_role(self, role: str, password: str) -> None:
        pool = self._admin()
        try:
            current = await pool.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
            exists = await pool.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                verifier = scram_verifier(password)
                await pool.execute(
                    f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD {quote_literal(verifier)}"
                )
            elif not verifier_matches(current, password):
                verifier = scram_verifier(password)
                await pool.execute(f"ALTER ROLE {quote_ident(role)} LOGIN PASSWORD {quote_literal(verifier)}")
            else:
                verifier = str(current)
        except asyncpg.PostgresError as exc:
            raise self._error(f"cannot create role {role}", exc) from None
        await self._role_changed(role, password, verifier)

    async def _role_changed(self, role: str, password: str, verifier: str) -> None:
        """PgBouncer keeps its own list of users."""
        if self._pgbouncer is not None:
            await self._pgbouncer.set_user(role, verifier)

    async def database_exists(self, physical: str) -> bool:
        return bool(await self._admin().fetchval("SELECT true FROM pg_database WHERE datname = $1", physical))

    async def list_databases(self) -> list[str]:
        rows = await self._admin().fetch(
            "SELECT datname FROM pg_database"
            " WHERE datistemplate = false AND datname <> 'postgres' ORDER BY datname"
        )
        return [row["datname"] for row in rows]

    async def create_database(
        self,
        physical: str,
        *,
        owner: str,
        template: str | None = None,
        schema_only: bool = False,
        issued: Callable[[], None] | None = None,
    ) -> None:
        """Create `physical` (a copy of `template`); `issued()` is called as the CREATE
        DATABASE goes to PostgreSQL, after the checks that precede it."""
        async with self._serialised():
            # PgBouncer's list of databases is updated while the copy runs (no reload:
            # its fallback entry reaches a new database the moment a client asks).
            announce = asyncio.create_task(self._databases_changed(added=physical))
            try:
                await self._create(physical, owner=owner, template=template, issued=issued)
                if schema_only and template is not None:
                    await self._truncate_data(physical)
            except BaseException:
                await asyncio.gather(announce, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._databases_changed(removed=physical)
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
                await self._admin().execute(sql + " STRATEGY FILE_COPY")
            except asyncpg.PostgresError as exc:
                raise self._error(f"cannot create database {physical}", exc) from None
            return
        if template == physical:
            raise LocalServerError(f"cannot copy database {physical} onto itself")
        sql += f" TEMPLATE {quote_ident(template)} STRATEGY FILE_COPY"
        async with self._fence(template, idle_shortcut=True) as tighten:
            if issued is not None:
                issued()
            # Someone may slip in over PostgreSQL's own port between our checks and the copy.
            for attempt in range(3):
                try:
                    await self._admin().execute(sql)
                    return
                except asyncpg.ObjectInUseError as exc:
                    if attempt == 2:
                        raise self._error(f"cannot copy database {template}", exc) from None
                    await tighten()
                    await self._end_sessions(template)
                except asyncpg.PostgresError as exc:
                    raise self._error(f"cannot copy database {template} to {physical}", exc) from None

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
            raise self._error(f"cannot empty database {physical}", exc) from None
        finally:
            await conn.close()

    async def set_database_owner(self, physical: str, owner: str) -> None:
        try:
            sql = f"ALTER DATABASE {quote_ident(physical)} OWNER TO {quote_ident(owner)}"
            await self._admin().execute(sql)
        except asyncpg.PostgresError as exc:
            raise self._error(f"cannot change the owner of database {physical}", exc) from None

    async def drop_database(self, physical: str) -> None:
        async with self._serialised():
            try:
                await self._admin().execute(f"DROP DATABASE IF EXISTS {quote_ident(physical)} WITH (FORCE)")
            except asyncpg.PostgresError as exc:
                raise self._error(f"cannot drop database {physical}", exc) from None
            await self._databases_changed(removed=physical)

    async def replace_database(self, physical: str, *, template: str, owner: str) -> None:
        """Restore: `physical` becomes a fresh copy of `template`; endpoints keep working."""
        staging = f"{physical[:40]}_restore_{secrets.token_hex(4)}"
        async with self._serialised():
            await self._create(staging, owner=owner, template=template)
            try:
                async with self._fence(physical):
                    await self._admin().execute(
                        f"DROP DATABASE IF EXISTS {quote_ident(physical)} WITH (FORCE)"
                    )
                    await self._admin().execute(
                        f"ALTER DATABASE {quote_ident(staging)} RENAME TO {quote_ident(physical)}"
                    )
            except asyncpg.PostgresError as exc:
                with contextlib.suppress(asyncpg.PostgresError):
                    await self._admin().execute(
                        f"DROP DATABASE IF EXISTS {quote_ident(staging)} WITH (FORCE)"
                    )
                raise self._error(f"cannot restore database {physical}", exc) from None

    async def _databases_changed(self, *, added: str | None = None, removed: str | None = None) -> None:
        """PgBouncer lists every database: tell it about one that appeared or went away
        (a restore renames its copy onto the old name, so the list stays the same)."""
        if self._pgbouncer is None:
            return
        wanted = set(self._pgbouncer.databases())
        if added is not None:
            wanted.add(added)
        if removed is not None:
            wanted.discard(removed)
        await self._pgbouncer.set_databases(wanted)

    # --- the fence -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _fence(
        self, database: str, *, idle_shortcut: bool = False
    ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Hold new connections to `database`, let its open transactions finish (bounded),
        end its sessions and PAUSE it in PgBouncer. Yields `tighten()`, which pauses
        PgBouncer if that was skipped (for a copy that found a session after all).

        `idle_shortcut` (copies from a template): when one query finds no session on the
        database at all, PgBouncer holds no server connection to it either, so the PAUSE
        and RESUME (two console round trips, ~8 ms) are skipped. PostgreSQL itself makes
        connections that arrive during the copy wait; one that slipped in just before
        makes the copy fail with ObjectInUse, and the caller tightens and retries."""
        self._fences.hold(database)
        pause: asyncio.Task[None] | None = None

        async def tighten() -> None:
            nonlocal pause
            if pause is None and self._pgbouncer is not None:
                pause = asyncio.create_task(self._pgbouncer.pause(database))
                await self._end_sessions(database)
                await asyncio.wait({pause}, timeout=5)

        try:
            idle = idle_shortcut and not await self._admin().fetch(
                _OTHER_SESSIONS.format(what="pid"), database
            )
            if not idle:
                if self._pgbouncer is not None:
                    pause = asyncio.create_task(self._pgbouncer.pause(database))
                if await self._drain(database, pause):
                    await self._end_sessions(database)
                if pause is not None:
                    # Ending the sessions releases PgBouncer's server connections, so the
                    # PAUSE completes now; if not, the copy still proceeds on a quiet database.
                    await asyncio.wait({pause}, timeout=5)
            yield tighten
        finally:
            try:
                if pause is not None:
                    pause.cancel()
                    await asyncio.gather(pause, return_exceptions=True)
                    assert self._pgbouncer is not None
                    await self._pgbouncer.resume(database)
            finally:
                self._fences.release(database)

    async def _drain(self, database: str, pause: asyncio.Task[None] | None) -> bool:
        """Wait (bounded) until the transactions open on `database` at fence time ended.

        Only those: a busy client may start new ones all the time, and those are ended
        with their sessions anyway, so waiting for a quiet moment could take forever.
        Returns False when no other session was connected at all (nothing to end).
        """
        deadline = time.monotonic() + self.fence_timeout
        query = _OTHER_SESSIONS.format(what="pid, xact_start") + " AND xact_start IS NOT NULL"

        async def open_transactions() -> set[tuple[int, object]]:
            rows = await self._admin().fetch(query, database)
            return {(row["pid"], row["xact_start"]) for row in rows}

        # The common case, an idle template, is settled by this one query.
        rows = await self._admin().fetch(_OTHER_SESSIONS.format(what="pid, xact_start"), database)
        if not rows:
            # No server connection of PgBouncer's either, so its PAUSE returns at once.
            if pause is not None:
                await asyncio.wait({pause}, timeout=self.fence_timeout)
            return False
        waiting = {(row["pid"], row["xact_start"]) for row in rows if row["xact_start"] is not None}
        if pause is not None:
            # PAUSE returns once PgBouncer's transactions on the database have finished.
            await asyncio.wait({pause}, timeout=self.fence_timeout)
        while waiting and time.monotonic() < deadline:
            waiting &= await open_transactions()
            if waiting:
                await asyncio.sleep(_POLL)
        return True

    async def _end_sessions(self, database: str) -> None:
        pool = self._admin()
        ended = await pool.fetchval(
            _OTHER_SESSIONS.format(what="count(pg_terminate_backend(pid))"),
            database,
        )
        if not ended:
            return
        # pg_terminate_backend only signals; wait until the backends are gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = await pool.fetchval(
                _OTHER_SESSIONS.format(what="count(*)"),
                database,
            )
            if not left:
                return
            await asyncio.sleep(_POLL)

    # --- endpoints -------------------------------------------------------------------

    def _direct_upstream(self) -> Upstream:
        return Upstream(self._pg_host, self._pg_port)

    def _pooled_upstream(self) -> Upstream:
        if self._pgbouncer is not None:
            return Upstream("127.0.0.1", self._pgbouncer.port)
        return self._direct_upstream()

    async def open_endpoint(
        self,
        endpoint_id: str,
        *,
        databases: Mapping[str, str],
        direct_port: int = 0,
        pooled_port: int = 0,
        gate: Gate | None = None,
    ) -> EndpointAddress:
        """Listeners for an endpoint; `gate` (when given) admits each connection by its
        user and logical database, else `databases` maps logical to physical names."""
        if not self._started:
            raise LocalServerError("the data plane is not started")
        if endpoint_id in self._endpoints:
            await self.close_endpoint(endpoint_id)
        proxy = EndpointProxy(
            endpoint_id,
            databases,
            fences=self._fences,
            tls=self._tls,
            on_activity=self.on_activity,
            gate=gate,
        )
        try:
            direct = await proxy.listen("direct", direct_port, self._direct_upstream)
            pooled = await proxy.listen("pooled", pooled_port, self._pooled_upstream)
            host_address = await self._listen_on_host(proxy, endpoint_id)
        except OSError as exc:
            await proxy.close()
            raise LocalServerError(
                f"cannot listen for endpoint {endpoint_id}: {exc.strerror or exc}"
            ) from None
        self._endpoints[endpoint_id] = proxy
        return EndpointAddress(
            endpoint_id=endpoint_id,
            host="127.0.0.1",
            direct_port=direct,
            pooled_port=pooled,
            pooled_via_pgbouncer=self.pgbouncer_available,
            tls=self._tls is not None,
            ca_file=str(self._tls.ca_file) if self._tls is not None else None,
            host_address=host_address,
        )

    async def _listen_on_host(self, proxy: EndpointProxy, endpoint_id: str) -> str | None:
        """The endpoint's own loopback address with a listener on 5432, so a URL built
        from its `host` connects; None (said once) where this machine cannot."""
        problem = ""
        for address in loopback_addresses(endpoint_id):
            try:
                await proxy.listen("host", DEFAULT_PORT, self._direct_upstream, host=address, exact=True)
                return address
            except OSError as exc:
                problem = f"cannot listen on {address}:{DEFAULT_PORT} ({exc.strerror or exc})"
                if exc.errno == errno.EADDRNOTAVAIL:  # no loopback addresses beyond 127.0.0.1
                    break
        if self.host_problem is None:
            self.host_problem = problem
            log.warning("URLs built from an endpoint's host will not connect: %s; use connection_uri",
                        problem)
        return None

    def endpoint_connections(self) -> dict[str, int]:
        """The endpoints with open client connections, and how many (the history asks
        on every connect and leave, so this is a dict walk, no I/O)."""
        return {ep_id: count for ep_id, proxy in self._endpoints.items() if (count := proxy.open_connections)}

    async def current_lsn(self) -> str:
        """PostgreSQL's WAL position now (where the next record goes: with asynchronous
        commit the write position lags), written as Neon writes LSNs (`0/16B3748`)."""
        return str(await self._admin().fetchval("SELECT pg_current_wal_insert_lsn()::text"))

    def open_connections(self) -> int:
        """Client connections open on any endpoint now."""
        return sum(proxy.open_connections for proxy in self._endpoints.values())

    async def update_endpoint_databases(self, endpoint_id: str, databases: Mapping[str, str]) -> None:
        proxy = self._endpoints.get(endpoint_id)
        if proxy is None:
            raise LocalServerError(f"endpoint {endpoint_id} is not open")
        proxy.databases = dict(databases)

    def drop_connections(self, endpoint_id: str) -> None:
        """End the endpoint's client connections; it keeps listening."""
        proxy = self._endpoints.get(endpoint_id)
        if proxy is not None:
            proxy.disconnect_all()

    async def close_endpoint(self, endpoint_id: str) -> None:
        proxy = self._endpoints.pop(endpoint_id, None)
        if proxy is not None:
            await proxy.close()
