"""The instance data plane: a PostgreSQL per branch (#24), behind `CATHOUSE_LOCAL_COMPUTE=instance`.

It answers the control plane's calls (`cathouse_harness.local.core.DataPlaneLike`) with
`cathouse_harness.local.compute`: the root branch's first database makes the root
instance, a branch's first copy forks its parent's instance (a spare, or a stopped copy,
when the parent is suspended; through the backup functions when it runs), a deleted
branch's instance is removed, and endpoints are the byte relay's listeners
(`cathouse_harness.local.relay`). The control plane still speaks in physical database
names; a branch's databases keep their real names inside its instance, and this module
maps the one to the other.

Roles and databases the API changes reach the instance lazily: every change ends the
branch's connections (`drop_connections`, as a Neon compute's config is applied), which
marks the branch, and its next login first brings the instance's roles (passwords of the
API's record) and databases in line with the record. A password is set only when the
record's changed since it was last set, so a session's own `ALTER ROLE … PASSWORD`
holds on its branch until the API resets it.

An instance without connections for `suspend_after` seconds is stopped (Neon's
suspend) and started by the next login (resume).

Not yet (ARCHITECTURE.md, "Compute per branch"): PgBouncer per instance (pooled is
direct here), read-only endpoints on standby forks (they are read-only sessions of the
branch's instance, as on the shared plane), schema-only branches, restore to a point in
time (a restore from another live branch's instance works), the xdist and history LSNs
per instance (`current_lsn` is the root instance's).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute import spares
from cathouse_harness.local.compute import users as compute_users
from cathouse_harness.local.compute.fork import fork
from cathouse_harness.local.compute.instance import Instance, admin_session, remove, running_pid, start, stop
from cathouse_harness.local.compute.layout import ComputeHome, instance_paths, open_home, socket_file
from cathouse_harness.local.compute.roots import create_branch_role, make_root
from cathouse_harness.local.compute.template import ensure_template
from cathouse_harness.local.listeners import EndpointAddress, Listeners
from cathouse_harness.local.names import host_mode
from cathouse_harness.local.neon_features import ServerFeatures
from cathouse_harness.local.pg_choice import ENV_VAR as POSTGRES_BIN_ENV
from cathouse_harness.local.pg_choice import PgInstall, choose_install
from cathouse_harness.local.postgres import scram_verifier
from cathouse_harness.local.proxy import Fences, Gate, Refusal, Upstream
from cathouse_harness.local.relay import CancelKeys, RelayEndpoint, Route
from cathouse_harness.local.state import iso, now
from cathouse_harness.local.tls import TlsMaterial, server_material
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until_async
from cathouse_harness.support.redact import register_url
from psycopg import sql

log = get_logger("local.instance_plane")

ENV_VAR = "CATHOUSE_LOCAL_COMPUTE"
CHOICES = ("shared", "instance")
SUSPEND_AFTER = 300.0
_TICK = 1.0
_MADE_POLL = Backoff(0.005, most=0.1)
_MADE_WAIT = 120.0
# what a read-only endpoint's sessions start with (as on the shared plane, `catalog`)
_READ_ONLY = {"default_transaction_read_only": "on"}

# the role's verifier when it may log in to the database: never a superuser's (the
# control plane's bootstrap role), never one past its VALID UNTIL
_VERIFIER_SQL = """
SELECT a.rolpassword FROM pg_authid a
 WHERE a.rolname = %s AND a.rolcanlogin AND NOT a.rolsuper
   AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())
   AND EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = %s AND d.datallowconn)
"""


def compute_choice() -> str:
    """`shared` (today's one PostgreSQL) or `instance`; ConfigError-like one line otherwise."""
    value = (env.read(ENV_VAR) or "shared").strip().lower()
    if value not in CHOICES:
        raise LocalServerError(f"{ENV_VAR}={value!r} is not one of {', '.join(CHOICES)}",
                               hint=f"unset {ENV_VAR}, or set it to instance")
    return value


def _read_verifier(instance: Instance, role: str, database: str) -> str | None:
    with admin_session(instance) as session:
        row = session.execute(_VERIFIER_SQL, (role, database)).fetchone()
    text = row[0] if row else None
    return text if isinstance(text, str) and text.startswith("SCRAM-SHA-256$") else None


def _apply(instance: Instance, passwords: Mapping[str, str], gone: list[str],
           databases: list[tuple[str, str, str]]) -> None:
    """Bring the instance in line with its branch's record: roles with changed
    passwords (made when missing), roles the record dropped, databases (old name, name,
    owner) renamed or made."""
    with admin_session(instance) as session:
        roles = {name for (name,) in session.execute("SELECT rolname FROM pg_roles")}
        for name, password in passwords.items():
            if name not in roles:
                create_branch_role(session, name, password)
            else:
                session.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(scram_verifier(password))))
        for name in gone:
            try:
                session.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:  # it owns objects: left, as PostgreSQL would leave it
                log.info("role %s stays on instance %s: %s", name, instance.name, exc.diag.message_primary)
        names = {name for (name,) in session.execute("SELECT datname FROM pg_database")}
        for old, new, owner in databases:
            if old != new and old in names and new not in names:
                session.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                (old,))
                session.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(old), sql.Identifier(new)))
            elif new not in names:
                session.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(new), sql.Identifier(owner)))


def _features(instance: Instance) -> tuple[ServerFeatures, str]:
    with admin_session(instance) as session:
        version = str(session.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        names = session.execute("SELECT array(SELECT name FROM pg_available_extensions)").fetchone()
        try:
            with session.transaction():
                session.execute(
                    "CREATE COLLATION pg_temp.cathouse_icu_probe (provider = icu, locale = 'und')")
                raise _RolledBack
        except _RolledBack:
            icu = True
        except psycopg.Error:
            icu = False
    extensions = frozenset(names[0] if names else ())
    return ServerFeatures(extensions, icu, instance.install.describe()), version


class _RolledBack(Exception):
    """Leaves a probe's transaction by rolling it back."""


class InstanceDataPlane:
    """Branches as PostgreSQL instances, endpoints as relays (see the module)."""

    def __init__(self, home: Path, *, storage: str = "memory", postgres_bin: str | None = None,
                 suspend_after: float = SUSPEND_AFTER) -> None:
        self.home = Path(home)
        self.storage = storage
        self.suspend_after = suspend_after
        self._postgres_bin = postgres_bin
        self.install: PgInstall | None = None
        self.features: ServerFeatures | None = None
        self.server_version = ""
        self.pgbouncer_available = False
        self.pgbouncer_problem: str | None = "the instance data plane runs no PgBouncer yet: pooled is direct"
        self.on_activity: Callable[[], None] | None = None
        self.timings: dict[str, float] = {}
        self._neon: Any = None
        self._compute: ComputeHome | None = None
        self._superuser: Any = None
        self._tls: TlsMaterial | None = None
        self._listeners: Listeners | None = None
        self._keys = CancelKeys()
        self._locks: dict[str, asyncio.Lock] = {}
        # physical database -> (branch id, its name inside the branch's instance)
        self._where: dict[str, tuple[str, str]] = {}
        # (branch id, role) -> the record's password last set in the instance
        self._synced: dict[tuple[str, str], str] = {}
        # branches whose instance may differ from the record (synced at the next login)
        self._dirty: set[str] = set()
        # a restore's refork: branch id -> (source branch id, physicals it answered)
        self._reforked: dict[str, tuple[str, set[str]]] = {}
        self._last_used: dict[str, float] = {}
        self._lsn = "0/0"
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ life cycle

    def attach(self, neon: Any) -> None:
        """The control plane whose records say which branch a database or endpoint is."""
        self._neon = neon

    @property
    def cluster_dir(self) -> Path | None:
        return self._compute.base if self._compute is not None else None

    @property
    def ca_file(self) -> Path | None:
        return self._tls.ca_file if self._tls is not None else None

    @property
    def host_problem(self) -> str | None:
        return self._listeners.host_problem if self._listeners is not None else None

    @property
    def names_problem(self) -> str | None:
        return self._listeners.names_problem if self._listeners is not None else None

    def pooler_info(self) -> dict[str, object] | None:
        return None

    async def start(self) -> None:
        started = time.perf_counter()
        mode = await asyncio.to_thread(host_mode)
        user = await asyncio.to_thread(compute_users.home_os_user, self.home)
        self._compute = compute = await asyncio.to_thread(open_home, self.home, user, self.storage)  # type: ignore[arg-type]
        choice = self._postgres_bin or env.read(POSTGRES_BIN_ENV)
        self.install = install = await asyncio.to_thread(
            choose_install, choice, data_dir=compute.base / "templates", user=user)
        template = await asyncio.to_thread(ensure_template, compute, install)
        self._superuser = template.superuser_password
        self._tls = await asyncio.to_thread(server_material, self.home / "tls")
        nowhere = Upstream("127.0.0.1", 0)  # the relay goes to instances' sockets, not here
        self._listeners = Listeners(
            Fences(), self._tls, nowhere, nowhere, pooled_via_pgbouncer=False,
            make_proxy=functools.partial(RelayEndpoint, resolve=self._route, keys=self._keys),
            cancel=self._keys.cancel,
        )
        await self._listeners.start_router(mode)
        self._ticker = asyncio.create_task(self._tick())
        self.timings["start_total"] = time.perf_counter() - started

    async def stop(self, *, stop_postgres: bool = True) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._listeners is not None:
            await self._listeners.close_all()
        if self._background:
            await asyncio.wait(self._background, timeout=30)
        if stop_postgres and self._compute is not None:
            for instance in self._all_instances():
                await asyncio.to_thread(stop, instance)

    def remove_home_user(self) -> None:
        """Delete the home's per-home OS user (tests, once the files are gone)."""
        compute_users.remove_home_user(self.home)

    # ------------------------------------------------------------------ instances

    def _lock(self, branch_id: str) -> asyncio.Lock:
        return self._locks.setdefault(branch_id, asyncio.Lock())

    def _instance(self, branch_id: str) -> Instance:
        compute, install = self._compute, self.install
        if compute is None or install is None:
            raise LocalServerError("the data plane is not started")
        return Instance(branch_id, instance_paths(compute, branch_id), compute.user, install, self._superuser)

    @staticmethod
    def _exists(instance: Instance) -> bool:
        return (instance.paths.data / "PG_VERSION").exists()

    def _all_instances(self) -> list[Instance]:
        assert self._compute is not None
        folder = self._compute.base / "instances"
        names = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
        return [self._instance(name) for name in names]

    async def _running(self, branch_id: str) -> Instance:
        """The branch's instance, started when it was suspended."""
        instance = self._instance(branch_id)
        async with self._lock(branch_id):
            if running_pid(instance) is None:
                await asyncio.to_thread(start, instance)
        self._last_used[branch_id] = time.monotonic()
        return instance

    def _state(self) -> Any:
        if self._neon is None:
            raise LocalServerError("the instance data plane has no control plane attached")
        return self._neon.state

    def _owner_of(self, physical: str) -> tuple[Any, str] | None:
        """The branch record holding `physical`, and the database's name in its instance."""
        state = self._state()
        known = self._where.get(physical)
        if known is not None and known[0] in state.branches:
            return state.branches[known[0]], known[1]
        for branch in state.branches.values():
            for db in branch.databases.values():
                if db.physical == physical:
                    return branch, db.name
        return None

    async def _learn(self, instance: Instance) -> None:
        if self.features is None:
            self.features, self.server_version = await asyncio.to_thread(_features, instance)

    def _spares_later(self, parent: Instance) -> None:
        compute = self._compute
        assert compute is not None
        job = asyncio.ensure_future(asyncio.to_thread(spares.prepare, parent, compute, 1))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ databases

    async def ensure_role(self, role: str, password: str) -> None:
        """The shared plane's internal upstream passwords: none here (the relay logs in
        with the client's own proof)."""

    async def create_database(self, physical: str, *, owner: str, template: str | None = None,
                              schema_only: bool = False, issued: Callable[[], None] | None = None) -> None:
        found = self._owner_of(physical)
        if found is None:
            # a restore's copy for a database its branch will name later: the refork
            # of the restore (`replace_database`) brings it along under its name
            if issued is not None:
                issued()
            return
        branch, name = found
        if schema_only:
            raise LocalServerError("schema-only branches are not made by the instance data plane yet",
                                   hint="unset CATHOUSE_LOCAL_COMPUTE")
        instance = self._instance(branch.id)
        async with self._lock(branch.id):
            if issued is not None:
                issued()
            if not self._exists(instance):
                await self._make(branch, instance, name, owner, template)
            else:
                await self._ensure_database(branch, instance, name, owner)
        self._where[physical] = (branch.id, name)

    async def _make(self, branch: Any, instance: Instance, name: str, owner: str,
                    template: str | None) -> None:
        compute, install = self._compute, self.install
        assert compute is not None and install is not None
        parent = self._owner_of(template) if template is not None else None
        if parent is not None:
            source = self._instance(parent[0].id)
            stopped = running_pid(source) is None
            async with self._lock(parent[0].id):
                await asyncio.to_thread(fork, source, compute, branch.id)
            if stopped:
                self._spares_later(source)
        else:
            password = branch.roles[owner].password
            await asyncio.to_thread(make_root, compute, install, branch.id, owner=owner, database=name,
                                    owner_password=password)
            self._synced[(branch.id, owner)] = password
        self._dirty.add(branch.id)
        self._last_used[branch.id] = time.monotonic()
        await self._learn(instance)

    async def _ensure_database(self, branch: Any, instance: Instance, name: str, owner: str) -> None:
        # the caller holds the branch's lock: started here, not through _running
        if running_pid(instance) is None:
            await asyncio.to_thread(start, instance)
        self._last_used[branch.id] = time.monotonic()
        await asyncio.to_thread(_apply, instance, {}, [], [(name, name, owner)])

    async def drop_database(self, physical: str) -> None:
        found = self._owner_of(physical)
        known = self._where.pop(physical, None)
        where = (found[0].id, found[1]) if found is not None else known
        if where is None:
            return
        branch_id, name = where
        instance = self._instance(branch_id)
        branch = self._state().branches.get(branch_id)
        async with self._lock(branch_id):
            if branch is None or branch.deleting:
                await asyncio.to_thread(remove, instance)
                self._forget(branch_id)
                return
            if not self._exists(instance):
                return
        await self._running(branch_id)

        def drop() -> None:
            with admin_session(instance) as session:
                session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))

        await asyncio.to_thread(drop)

    def _forget(self, branch_id: str) -> None:
        self._dirty.discard(branch_id)
        self._last_used.pop(branch_id, None)
        self._reforked.pop(branch_id, None)
        for key in [key for key in self._synced if key[0] == branch_id]:
            del self._synced[key]

    async def replace_database(self, physical: str, *, template: str, owner: str) -> None:
        """A restore: the branch's instance becomes a fork of the source's, once per
        restore (every database of the branch is in that fork)."""
        target, source = self._owner_of(physical), self._owner_of(template)
        if target is None or source is None:
            raise LocalServerError(
                "this restore needs a point in time the instance data plane keeps no copy of",
                                   hint="restore from another branch, or unset CATHOUSE_LOCAL_COMPUTE")
        branch, origin = target[0], source[0]
        done = self._reforked.get(branch.id)
        if done is None or done[0] != origin.id or physical in done[1]:
            compute = self._compute
            assert compute is not None
            instance, parent = self._instance(branch.id), self._instance(origin.id)
            async with self._lock(branch.id):
                await asyncio.to_thread(remove, instance)
                async with self._lock(origin.id):
                    await asyncio.to_thread(fork, parent, compute, branch.id)
            self._forget(branch.id)
            self._dirty.add(branch.id)
            done = (origin.id, set())
            self._reforked[branch.id] = done
        done[1].add(physical)
        self._where[physical] = (branch.id, source[1])

    async def set_database_owner(self, physical: str, owner: str) -> None:
        found = self._owner_of(physical)
        if found is None:
            return
        instance = await self._running(found[0].id)

        def alter() -> None:
            with admin_session(instance) as session:
                session.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(found[1]), sql.Identifier(owner)))

        await asyncio.to_thread(alter)

    async def end_sessions(self, physical: str, *, keep: int) -> None:
        """Only the shared plane's SQL interception asks for this."""

    async def database_added(self, physical: str) -> None:
        """Only the shared plane's SQL interception tells of this."""

    async def list_databases(self) -> list[str]:
        """The physical names of the databases whose branch has an instance."""
        found: list[str] = []
        for branch in self._state().branches.values():
            if self._exists(self._instance(branch.id)):
                found += [db.physical for db in branch.databases.values() if db.physical]
        return found

    def admin_dsn(self, database: str = "postgres") -> str:
        found = self._owner_of(database)
        state = self._state()
        branch_id = found[0].id if found is not None else state.default_branch.id
        name = found[1] if found is not None else database
        instance = self._instance(branch_id)
        dsn = (f"postgresql://postgres:{self._superuser.reveal()}@/{name}"
               f"?host={instance.paths.socket_dir}&port=5432")
        register_url(dsn)
        return dsn

    async def current_lsn(self) -> str:
        """The default branch's instance's WAL position when it runs (the last one seen
        otherwise): one instance's LSNs, not a per-branch timeline yet."""
        instance = self._instance(self._state().default_branch.id)
        if running_pid(instance) is None:
            return self._lsn

        def read() -> str:
            with admin_session(instance) as session:
                return str(session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]

        with contextlib.suppress(LocalServerError):
            self._lsn = await asyncio.to_thread(read)
        return self._lsn

    # ------------------------------------------------------------------ sync

    async def _sync(self, branch: Any, instance: Instance) -> None:
        self._dirty.discard(branch.id)
        passwords = {name: role.password for name, role in branch.roles.items()
                     if self._synced.get((branch.id, name)) != role.password}
        gone = [name for (owner, name) in self._synced if owner == branch.id and name not in branch.roles]
        databases: list[tuple[str, str, str]] = []
        assigned = False
        for db in branch.databases.values():
            if db.physical is None:
                db.physical = self._neon.catalog.new_physical()
                assigned = True
            before = self._where.get(db.physical)
            old = before[1] if before is not None and before[0] == branch.id else db.name
            databases.append((old, db.name, db.owner_name))
            self._where[db.physical] = (branch.id, db.name)
        try:
            await asyncio.to_thread(_apply, instance, passwords, gone, databases)
        except BaseException:
            self._dirty.add(branch.id)
            raise
        for name, password in passwords.items():
            self._synced[(branch.id, name)] = password
        for name in gone:
            self._synced.pop((branch.id, name), None)
        if assigned:
            self._neon.save()

    # ------------------------------------------------------------------ endpoints

    async def _route(self, endpoint_id: str) -> Route:
        state = self._state()
        ep = state.endpoints.get(endpoint_id)
        branch = state.branches.get(ep.branch_id) if ep is not None else None
        if ep is None or branch is None or branch.deleting:
            raise Refusal("08006", f"endpoint {endpoint_id} does not exist")
        if ep.disabled:
            raise Refusal("08006", f"endpoint {endpoint_id} is disabled")
        instance = self._instance(branch.id)
        if not self._exists(instance):  # a fork still copying: wait, as for a compute starting
            await wait_until_async(lambda: self._exists(instance) or branch.deleting,
                                   timeout=_MADE_WAIT, backoff=_MADE_POLL)
            if branch.deleting or not self._exists(instance):
                raise Refusal("08006", f"endpoint {endpoint_id} has no compute")
        async with self._lock(branch.id):
            pass  # a fork or restore of this branch in progress ends first
        await self._running(branch.id)
        if branch.id in self._dirty:
            await self._sync(branch, instance)
        if ep.current_state == "idle":  # a suspended compute wakes on a connection
            ep.current_state, ep.started_at = "active", iso(now())
        extra = _READ_ONLY if ep.type == "read_only" else {}
        return Route(socket_file(instance.paths), functools.partial(self._verifier, instance), extra)

    async def _verifier(self, instance: Instance, role: str, database: str) -> str | None:
        return await asyncio.to_thread(_read_verifier, instance, role, database)

    @property
    def listeners(self) -> Listeners:
        if self._listeners is None:
            raise LocalServerError("the data plane is not started")
        return self._listeners

    async def open_endpoint(self, endpoint_id: str, *, databases: Mapping[str, str], direct_port: int = 0,
                            pooled_port: int = 0, gate: Gate | None = None) -> EndpointAddress:
        """The relay's listeners; `gate` is the shared plane's and not used: the branch's
        instance decides who may log in."""
        self._mark(endpoint_id)
        return await self.listeners.open(endpoint_id, databases=databases, direct_port=direct_port,
                                         pooled_port=pooled_port, on_activity=self.on_activity)

    def _mark(self, endpoint_id: str) -> None:
        ep = self._state().endpoints.get(endpoint_id) if self._neon is not None else None
        if ep is not None:
            self._dirty.add(ep.branch_id)

    def drop_connections(self, endpoint_id: str) -> None:
        self._mark(endpoint_id)
        if self._listeners is not None:
            self._listeners.drop_connections(endpoint_id)

    def endpoint_connections(self) -> dict[str, int]:
        return self._listeners.connections() if self._listeners is not None else {}

    def open_connections(self) -> int:
        return self._listeners.open_connections() if self._listeners is not None else 0

    async def close_endpoint(self, endpoint_id: str) -> None:
        if self._listeners is not None:
            await self._listeners.close(endpoint_id)

    # ------------------------------------------------------------------ suspend

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            with contextlib.suppress(Exception):
                await self._suspend_idle()

    async def _suspend_idle(self) -> None:
        state = self._state() if self._neon is not None else None
        if state is None:
            return
        moment = time.monotonic()
        for endpoint_id in self.endpoint_connections():
            ep = state.endpoints.get(endpoint_id)
            if ep is not None:
                self._last_used[ep.branch_id] = moment
        for branch_id, used in list(self._last_used.items()):
            if moment - used < self.suspend_after:
                continue
            lock = self._lock(branch_id)
            if lock.locked():
                continue
            async with lock:
                instance = self._instance(branch_id)
                if running_pid(instance) is not None:
                    log.info("instance %s idle for %.0f s: suspended", branch_id, moment - used)
                    await asyncio.to_thread(stop, instance)
                self._last_used.pop(branch_id, None)
