"""The data plane of the embedded default: databases as branches, endpoints as proxies.

The control plane (the local Neon API) decides what exists; the data plane makes it real
on one PostgreSQL cluster: a branch is a physical database copied from its parent's
(`databases`, fenced by `fencing`), an endpoint is a set of loopback listeners
(`listeners`) that map the logical database name a client asks for to the branch's
physical database. This module starts and stops the cluster, TLS and PgBouncer, and is
the one face the control plane talks to (`cathouse_harness.local.core.DataPlaneLike`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.databases import Databases, list_databases
from cathouse_harness.local.fencing import DEFAULT_FENCE_TIMEOUT, Fencer
from cathouse_harness.local.listeners import EndpointAddress, Listeners
from cathouse_harness.local.names import host_mode
from cathouse_harness.local.neon_features import ServerFeatures
from cathouse_harness.local.pg_choice import ENV_VAR as POSTGRES_BIN_ENV
from cathouse_harness.local.pg_choice import PgInstall, check_choice, choose_install, system_alternative
from cathouse_harness.local.pgbouncer import PgBouncer, find_pgbouncer, pooler_mode
from cathouse_harness.local.postgres import (
    Cluster,
    ClusterPaths,
    OsUser,
    cluster_root,
    prepare_root,
    resolve_os_user,
)
from cathouse_harness.local.proxy import Fences, Gate, Upstream
from cathouse_harness.local.tls import TlsMaterial, server_material
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger

# re-exported: tests, benchmarks and the server import them from here
__all__ = ["DEFAULT_FENCE_TIMEOUT", "DataPlane", "EndpointAddress"]

log = get_logger("local.dataplane")


async def _rollback_only(connection: asyncpg.Connection) -> None:
    """The admin pool's reset. asyncpg's own sends RESET ALL, UNLISTEN and the like on
    every release: a round trip after each query, which the next query on that connection
    waits for. Admin queries change no session state; a transaction an error left open is
    still rolled back."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class _RolledBack(Exception):
    """Leaves a probe's transaction by rolling it back."""


class DataPlane:
    """Databases and endpoint listeners on the embedded (or an external) PostgreSQL."""

    def __init__(
        self,
        home: Path,
        *,
        storage: Literal["memory", "disk"] = "memory",
        external_pg_url: str | None = None,
        fence_timeout: float = DEFAULT_FENCE_TIMEOUT,
        postgres_bin: str | None = None,
    ) -> None:
        self.home = Path(home)
        # which PostgreSQL runs the cluster (`pg_choice`); None: CATHOUSE_POSTGRES_BIN, else auto
        self._postgres_bin = postgres_bin
        self.install: PgInstall | None = None
        # what the running PostgreSQL has of Neon's features; None before start()
        self.features: ServerFeatures | None = None
        self.storage = storage
        self._fence_timeout = fence_timeout
        self._external_url = external_pg_url
        self._cluster: Cluster | None = None
        self._runtime: Path | None = None
        self._user: OsUser | None = None
        self._pool: asyncpg.Pool | None = None
        self._server_version = ""
        self._fences = Fences()
        # built by start(), once the pool, TLS and PgBouncer are known
        self._fencer: Fencer | None = None
        self._databases: Databases | None = None
        self._listeners: Listeners | None = None
        self._started = False
        self._pg_host = "127.0.0.1"
        self._pg_port = 0
        self._tls: TlsMaterial | None = None
        self._pgbouncer: PgBouncer | None = None
        self.pgbouncer_problem: str | None = None
        self.timings: dict[str, float] = {}
        # called when a client connects to or leaves an endpoint (the control plane's touch)
        self.on_activity: Callable[[], None] | None = None
        # a memory cluster outlives stop() only for a restart (`ServerHandle.restart`)
        self.keep_cluster = False
        # a branch id's read-write endpoint id (the control plane's; names mode routes a
        # time-travel host, which names the branch, by it)
        self.branch_endpoint: Callable[[str], str | None] = lambda _branch_id: None

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
        started = time.perf_counter()
        # names or addresses for endpoint hosts: a bad setting fails before anything starts
        mode = await asyncio.to_thread(host_mode)
        if self._external_url:
            parts = urlsplit(self._external_url)
            self._pg_host = parts.hostname or "127.0.0.1"
            self._pg_port = parts.port or 5432
            admin = self._external_url
        else:
            self._user = await asyncio.to_thread(resolve_os_user)
            root = cluster_root(self.home, self.storage, self._user)
            self._postgres_bin = self._postgres_bin or env.read(POSTGRES_BIN_ENV)
            self.install = await asyncio.to_thread(
                choose_install,
                self._postgres_bin,
                data_dir=ClusterPaths.under(root).data,
                user=self._user,
            )
            self._cluster = Cluster(
                root, storage=self.storage, user=self._user, install=self.install.root, home=self.home
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
        self.features = await self._features(self._pool)
        await self._start_extras()
        self._build_parts(self._pool)
        assert self._listeners is not None
        await self._listeners.start_router(mode)
        self._started = True
        self.timings["start_total"] = time.perf_counter() - started

    async def _features(self, pool: asyncpg.Pool) -> ServerFeatures:
        """The extensions this PostgreSQL can create and whether it has ICU. ICU is
        tried, not looked up: since PostgreSQL 16 initdb lists an ICU collation
        (`unicode`) even in a build without ICU, which then cannot use it."""
        async with pool.acquire() as connection:
            names = await connection.fetchval("SELECT array(SELECT name FROM pg_available_extensions)")
            try:
                async with connection.transaction():
                    await connection.execute(
                        "CREATE COLLATION pg_temp.cathouse_icu_probe (provider = icu, locale = 'und')"
                    )
                    raise _RolledBack
            except _RolledBack:
                icu = True
            except asyncpg.PostgresError:
                icu = False
        aside = ""
        if self.install is not None:
            postgres = self.install.describe()
            # auto chose another: only an existing cluster's major keeps a home from it
            other = None if check_choice(self._postgres_bin) else system_alternative(self.install)
            if other is not None and self._cluster is not None:
                aside = (
                    f" ({other} is installed, but this home's cluster {self._cluster.paths.root} "
                    f"stays on the PostgreSQL {self.install.major} that made it unless removed)"
                )
        else:
            postgres = f"PostgreSQL {self._server_version} at CATHOUSE_PG_URL"
        return ServerFeatures(frozenset(names), icu, postgres, aside)

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
            mode=pooler_mode(),
        )
        try:
            await bouncer.start(await list_databases(self._admin()))
        except LocalServerError as exc:
            await bouncer.stop()
            self.pgbouncer_problem = str(exc)
            log.warning("pooled endpoints bypass PgBouncer: %s", exc)
            return
        self._pgbouncer = bouncer
        self.pgbouncer_problem = None

    def pooler_info(self) -> dict[str, object] | None:
        """What the pooled endpoints run behind, for a client's hint (None: no PgBouncer)."""
        bouncer = self._pgbouncer
        if bouncer is None:
            return None
        return {
            "mode": bouncer.mode,
            "version": bouncer.version_text,
            "prepared_statements": bouncer.prepared_statements,
        }

    def _build_parts(self, pool: asyncpg.Pool) -> None:
        self._fencer = Fencer(pool, self._fences, self._pgbouncer, self._fence_timeout)
        self._databases = Databases(pool, self._fencer, self._pgbouncer, self.admin_dsn, self._where())
        direct = Upstream(self._pg_host, self._pg_port)
        pooled = Upstream("127.0.0.1", self._pgbouncer.port) if self._pgbouncer is not None else direct
        self._listeners = Listeners(
            self._fences, self._tls, direct, pooled, pooled_via_pgbouncer=self._pgbouncer is not None,
            branch_endpoint=lambda branch_id: self.branch_endpoint(branch_id),
        )

    async def stop(self, *, stop_postgres: bool = True) -> None:
        if self._listeners is not None:
            await self._listeners.close_all()
        if self._pgbouncer is not None:
            await self._pgbouncer.stop()
            self._pgbouncer = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)
            self._pool = None
            self._databases = None
        if stop_postgres and self._cluster is not None:
            await self._cluster.stop()
        if self._cluster is not None:
            self._cluster.release()
            if stop_postgres and self.storage == "memory" and not self.keep_cluster:
                # memory is the server's while it runs: nothing stays in /dev/shm
                await asyncio.to_thread(self._cluster.discard)
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

    async def admin_url(self, database: str) -> str:
        """`admin_dsn`: this plane's one server runs whenever the plane does."""
        return self.admin_dsn(database)

    def _admin(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LocalServerError("the data plane is not started")
        return self._pool

    @property
    def fence_timeout(self) -> float:
        """How long a fence lets open transactions on a template finish before ending them."""
        return self._fence_timeout

    @fence_timeout.setter
    def fence_timeout(self, seconds: float) -> None:
        self._fence_timeout = seconds
        if self._fencer is not None:
            self._fencer.timeout = seconds

    def _db(self) -> Databases:
        if self._databases is None:
            raise LocalServerError("the data plane is not started")
        return self._databases

    @property
    def listeners(self) -> Listeners:
        """The open endpoints (benchmarks reach their proxies through it)."""
        if self._listeners is None or not self._started:
            raise LocalServerError("the data plane is not started")
        return self._listeners

    @property
    def host_problem(self) -> str | None:
        """Why endpoints have no loopback address of their own on 5432, if they have not
        (known once an endpoint has been opened)."""
        return self._listeners.host_problem if self._listeners is not None else None

    @property
    def names_problem(self) -> str | None:
        """Why endpoints are not named as Neon's are (`cathouse_harness.local.names`), if not."""
        return self._listeners.names_problem if self._listeners is not None else None

    # --- roles and databases (`cathouse_harness.local.databases`) ------------------------------

    async def ensure_role(self, role: str, password: str) -> None:
        await self._db().ensure_role(role, password)

    async def database_exists(self, physical: str) -> bool:
        return await self._db().exists(physical)

    async def list_databases(self) -> list[str]:
        return await list_databases(self._admin())

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
        await self._db().create(
            physical, owner=owner, template=template, schema_only=schema_only, issued=issued
        )

    async def end_sessions(self, physical: str, *, keep: int) -> None:
        """End every session on `physical` but backend `keep`."""
        await self._db().end_sessions(physical, keep=keep)

    async def database_added(self, physical: str) -> None:
        """A client made `physical` over its own session: PgBouncer hears of it."""
        await self._db().announce(physical)

    async def set_database_owner(self, physical: str, owner: str) -> None:
        await self._db().set_owner(physical, owner)

    async def drop_database(self, physical: str) -> None:
        await self._db().drop(physical)

    async def replace_database(self, physical: str, *, template: str, owner: str) -> None:
        """Restore: `physical` becomes a fresh copy of `template`; endpoints keep working."""
        await self._db().replace(physical, template=template, owner=owner)

    async def current_lsn(self, branch_id: str | None = None) -> str:
        """PostgreSQL's WAL position now (where the next record goes: with asynchronous
        commit the write position lags), written as Neon writes LSNs (`0/16B3748`); one
        for every branch, which all live in this one PostgreSQL."""
        return str(await self._admin().fetchval("SELECT pg_current_wal_insert_lsn()::text"))

    # --- endpoints (`cathouse_harness.local.listeners`) ----------------------------------------

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
        return await self.listeners.open(
            endpoint_id,
            databases=databases,
            direct_port=direct_port,
            pooled_port=pooled_port,
            gate=gate,
            on_activity=self.on_activity,
        )

    def endpoint_connections(self) -> dict[str, int]:
        """The endpoints with open client connections, and how many (no I/O)."""
        return self._listeners.connections() if self._listeners is not None else {}

    def open_connections(self) -> int:
        """Client connections open on any endpoint now."""
        return self._listeners.open_connections() if self._listeners is not None else 0

    def drop_connections(self, endpoint_id: str) -> None:
        """End the endpoint's client connections; it keeps listening."""
        if self._listeners is not None:
            self._listeners.drop_connections(endpoint_id)

    async def close_endpoint(self, endpoint_id: str) -> None:
        if self._listeners is not None:
            await self._listeners.close(endpoint_id)
