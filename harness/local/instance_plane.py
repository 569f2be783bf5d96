"""The data plane: a PostgreSQL per branch (#24).

It answers the control plane's calls (`cathouse_harness.local.control.core.DataPlaneLike`) with
`cathouse_harness.local.compute`: the root branch's first database makes the root
instance, a branch's first copy forks its parent's instance (a spare, or a stopped copy,
when the parent is suspended or no client uses it; through the backup functions when
one does), a deleted branch's instance is removed, and endpoints are the byte relay's
listeners (`cathouse_harness.local.data.relay`). The control plane still speaks in physical database
names; a branch's databases keep their real names inside its instance, and this module
maps the one to the other.

Roles and databases the API changes reach the instance lazily: every change ends the
branch's connections (`drop_connections`, as a Neon compute's config is applied), which
marks the branch, and its next login first brings the instance's roles (passwords of the
API's record) and databases in line with the record. A password is set only when the
record's changed since it was last set, so a session's own `ALTER ROLE … PASSWORD`
holds on its branch until the API resets it.

Databases sessions make or drop in SQL reach the record when the API's database
routes ask (`learn_databases`), at a login that syncs, and before a suspend.

An instance without connections for `suspend_after` seconds is stopped (Neon's
suspend) and started by the next login (resume). Pooled logins go to the instance's
own PgBouncer (`cathouse_harness.local.compute.pooler`), which stops before it.

Read-only endpoints and time-travel connections go to hot standbys
(`compute.moments.reads`, `compute.moments.replicas`); a schema-only branch is a fork with every row
dropped (`compute.moments.standby`); every instance gets a base right after it is made and
keeps its WAL, so a point in time no branch holds as it is now is replayed
(`compute.moments.pitr`); LSNs are each instance's own.

Not yet (ARCHITECTURE.md, "Compute per branch"): moments before a branch's base (its
parent's history is not followed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute import extensions, lease, spares
from cathouse_harness.local.compute import users as compute_users
from cathouse_harness.local.compute.extensions import STUB_COMMENT
from cathouse_harness.local.compute.fork import fork
from cathouse_harness.local.compute.instance import Instance, admin_session, remove, running_pid, start, stop
from cathouse_harness.local.compute.layout import ComputeHome, instance_paths, open_home, socket_file
from cathouse_harness.local.compute.moments.bases import Bases
from cathouse_harness.local.compute.moments.pitr import PREFIX as BASE_PREFIX
from cathouse_harness.local.compute.moments.pitr import Moment, copied_lsn, lsn_value, moment_of
from cathouse_harness.local.compute.moments.reads import Reads, lsn_of
from cathouse_harness.local.compute.moments.replicas import PREFIX as REPLICA_PREFIX
from cathouse_harness.local.compute.moments.replicas import Replicas
from cathouse_harness.local.compute.moments.replicas import leftovers as replica_leftovers
from cathouse_harness.local.compute.moments.standby import empty_databases, read_verifier
from cathouse_harness.local.compute.pooler import Poolers
from cathouse_harness.local.compute.roots import CLUSTER_ROLES, create_branch_role, make_root
from cathouse_harness.local.compute.template import ensure_template
from cathouse_harness.local.control.catalog import serving
from cathouse_harness.local.control.state import DatabaseRecord, RoleRecord, database_id, iso, now
from cathouse_harness.local.data.listeners import EndpointAddress, Listeners
from cathouse_harness.local.data.names import host_mode
from cathouse_harness.local.data.proxy import Refusal
from cathouse_harness.local.data.relay import CancelKeys, RelayEndpoint, Route
from cathouse_harness.local.data.scram import scram_verifier
from cathouse_harness.local.data.startup_options import TimeTravel
from cathouse_harness.local.data.tls import TlsMaterial, server_material
from cathouse_harness.local.pg_choice import ENV_VAR as POSTGRES_BIN_ENV
from cathouse_harness.local.pg_choice import PgInstall, choose_install, keep_major
from cathouse_harness.local.sim import neon_features
from cathouse_harness.local.sim.neon_features import ServerFeatures
from cathouse_harness.support import env
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until_async
from cathouse_harness.support.redact import register_url
from cathouse_harness.support.safe_paths import remove_tree, write_private
from psycopg import sql

log = get_logger("local.instance_plane")

SUSPEND_AFTER = 300.0
_TICK = 1.0
_MADE_POLL = Backoff(0.005, most=0.1)
_MADE_WAIT = 120.0
# a standby nobody used this long is removed (it is copied again when next asked for)
REPLICA_IDLE = 60.0

# the instance's own databases, never a branch's
_NOT_BRANCH_DATABASES = frozenset({"postgres", "template0", "template1"})


def _apply(instance: Instance, passwords: Mapping[str, str], gone: list[str],
           databases: list[tuple[str, str, str, bool]]) -> tuple[dict[str, str], list[str], set[str]]:
    """Bring the instance in line with its branch's record: roles with changed
    passwords (made when missing), roles the record dropped, databases (old name, name,
    owner, whether the instance had it before) renamed or made, and their owners. A
    database the instance had and a session dropped stays dropped. Returns the
    instance's branch databases (name -> owner), the record's names it dropped, and
    its roles as the API lists them (one admin session for all: a fork's sync is on
    the way of every create)."""
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
        owners = dict(session.execute(
            "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba").fetchall())
        dropped: list[str] = []
        for old, new, owner, known in databases:
            if old != new and old in owners and new not in owners:
                session.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                (old,))
                session.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(old), sql.Identifier(new)))
                owners[new] = owners.pop(old)
            elif new not in owners and known:
                dropped.append(new)
                continue
            elif new not in owners:
                session.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(new), sql.Identifier(owner)))
                owners[new] = owner
            if owners[new] != owner:
                session.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(new), sql.Identifier(owner)))
        listed = {name for (name,) in session.execute(_SQL_ROLES, (list(CLUSTER_ROLES),))}
    return {k: v for k, v in owners.items() if k not in _NOT_BRANCH_DATABASES}, dropped, listed


# roles as the API lists them: never the instance's own (superusers, `pg_*`, `neon_superuser`)
_SQL_ROLES = "SELECT rolname FROM pg_roles WHERE NOT rolsuper AND rolname !~ '^pg_' AND NOT rolname = ANY(%s)"


def _features(instance: Instance) -> tuple[ServerFeatures, str]:
    with admin_session(instance) as session:
        version = str(session.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        names = session.execute(  # a stub says how to get what this PostgreSQL lacks
            "SELECT array(SELECT name FROM pg_available_extensions WHERE comment IS DISTINCT FROM %s)",
            (STUB_COMMENT,)).fetchone()
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


def _preload_here(instance: Instance) -> dict[str, str]:
    with admin_session(instance) as session:
        row = session.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()
        versions = dict(session.execute(
            "SELECT name, default_version FROM pg_available_extensions WHERE comment IS DISTINCT FROM %s",
            (STUB_COMMENT,)).fetchall())
    folder = Path(row[0]) if row else None
    return {
        lib.name: str(versions.get(lib.extension) or "")
        for lib in neon_features.NEON_PRELOAD_LIBRARIES
        if folder is not None and all((folder / f"{file}.so").is_file() for file in lib.files)
    }


def _set_preload(instance: Instance, value: str) -> None:
    """ALTER SYSTEM needs the instance running; the new value takes effect at its next start."""
    was_running = running_pid(instance) is not None
    start(instance)
    with admin_session(instance) as session:
        if value:
            session.execute(
                sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(sql.Literal(value)))
        else:
            session.execute("ALTER SYSTEM RESET shared_preload_libraries")
    stop(instance)
    if was_running:
        start(instance)


class _RolledBack(Exception):
    """Leaves a probe's transaction by rolling it back."""


class InstanceDataPlane:
    """Branches as PostgreSQL instances, endpoints as relays (see the module)."""

    def __init__(self, home: Path, *, storage: str = "memory", postgres_bin: str | None = None,
                 suspend_after: float | None = None) -> None:
        self.home = Path(home)
        self.storage = storage
        self.suspend_after = SUSPEND_AFTER if suspend_after is None else suspend_after
        self._postgres_bin = postgres_bin
        self.install: PgInstall | None = None
        self.features: ServerFeatures | None = None
        self.server_version = ""
        self._poolers: Poolers | None = None
        # a restart (`stop_for_restart`) keeps an in-memory home's instances
        self.keep_cluster = False
        self.on_activity: Callable[[], None] | None = None
        # names mode: a branch id's read-write endpoint id (a time-travel host names the branch)
        self.branch_endpoint: Callable[[str], str | None] = lambda _branch_id: None
        self.timings: dict[str, float] = {}
        self._neon: Any = None
        self._compute: ComputeHome | None = None
        self._superuser: Any = None
        self._tls: TlsMaterial | None = None
        self._listeners: Listeners | None = None
        self._keys = CancelKeys()
        self._locks: dict[str, asyncio.Lock] = {}
        # physical database -> (instance, its name inside the instance)
        self._where: dict[str, tuple[str, str]] = {}
        # (instance, role) -> the record's password last set in the instance
        self._synced: dict[tuple[str, str], str] = {}
        # branches whose instance may differ from the record (synced at the next login)
        self._dirty: set[str] = set()
        # instances forked by a restore, synced at their first login (by instance name)
        self._dirty_instances: set[str] = set()
        # a restore's refork: instance -> (source instance, physicals it answered)
        self._reforked: dict[str, tuple[str, set[str]]] = {}
        # a restore's new copies: source instance -> (the fork, templates it answered)
        self._pending: dict[str, tuple[str, set[str]]] = {}
        self._last_used: dict[str, float] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._lease: int | None = None
        self._replicas: Replicas | None = None
        self._lsns: dict[str, str] = {}
        # instance -> its source's LSN when it was forked or replayed (`copy_lsn`)
        self._copied_lsns: dict[str, str] = {}
        self._bases: Bases | None = None

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

    @property
    def pgbouncer_available(self) -> bool:
        return self._poolers is not None and self._poolers.available

    def pooler_info(self) -> dict[str, object] | None:
        return self._poolers.info() if self._poolers is not None else None

    async def start(self) -> None:
        started = time.perf_counter()
        mode = await asyncio.to_thread(host_mode)
        user = await asyncio.to_thread(compute_users.home_os_user, self.home)
        self._compute = compute = await asyncio.to_thread(open_home, self.home, user, self.storage)  # type: ignore[arg-type]
        self._lease = await asyncio.to_thread(lease.hold, compute)  # cleanup/leftovers reads it
        choice = self._postgres_bin or env.read(POSTGRES_BIN_ENV)
        self.install = install = await asyncio.to_thread(
            choose_install, choice, base=compute.base, user=user)
        await asyncio.to_thread(keep_major, compute.base, install)  # before any template
        # before PostgreSQL 18, a mirror of it that has only Neon's extensions
        self.install = install = await asyncio.to_thread(extensions.mirror, compute.base, install)
        template = await asyncio.to_thread(ensure_template, compute, install)
        self._load_map()
        self._superuser = template.superuser_password
        self._replicas = Replicas(compute, self._instance, self._lock)
        self._bases = Bases(compute, self._instance, self._spawn)
        for name in replica_leftovers(compute, (REPLICA_PREFIX, BASE_PREFIX)):
            await asyncio.to_thread(remove, self._instance(name))
        self._tls = await asyncio.to_thread(server_material, self.home / "tls")
        self._poolers = Poolers()
        self._listeners = Listeners(
            self._tls, pooled_via_pgbouncer=self._poolers.available,
            make_proxy=functools.partial(RelayEndpoint, resolve=self._route, keys=self._keys),
            cancel=self._keys.cancel, branch_endpoint=lambda branch_id: self.branch_endpoint(branch_id),
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
        if self._poolers is not None:
            await self._poolers.stop_all()
        if stop_postgres and self._compute is not None:
            for instance in self._all_instances():
                await asyncio.to_thread(stop, instance)
            if self.storage == "memory" and not self.keep_cluster:
                await asyncio.to_thread(self._discard_memory)
                # as root, the home's own OS user owns nothing now (unless its disk
                # instances exist): left, it would stay in /etc/passwd for good
                await asyncio.to_thread(self._forget_user)
        lease.release(self._lease)
        self._lease = None

    def _discard_memory(self) -> None:
        """Memory is the server's while it runs (#26): the instances, spares and template
        go with it, and the next start forgets the branches they held."""
        compute = self._compute
        assert compute is not None
        remove_tree(compute.base, owners={compute.user.uid, os.geteuid()})
        self._where.clear()
        with contextlib.suppress(FileNotFoundError):
            self._map_file().unlink()

    def _forget_user(self) -> None:
        from cathouse_harness.cleanup.leftovers import forget_home_user

        for line in forget_home_user(self.home):
            log.info("%s", line)

    def remove_home_user(self) -> None:
        """Delete the home's per-home OS user (tests, once the files are gone)."""
        compute_users.remove_home_user(self.home)

    # ------------------------------------------------------------------ instances
    #
    # Instances are named apart from branches: a restore that preserves the old state
    # under a new branch moves the old databases (and so the old instance) to that new
    # record, and gives the restored branch a fork of the source under a new name. The
    # map physical -> (instance, name inside it) says which is whose; it is kept in
    # the home (`instances.json`) so a restarted server finds the same.

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _instance(self, name: str) -> Instance:
        compute, install = self._compute, self.install
        if compute is None or install is None:
            raise LocalServerError("the data plane is not started")
        return Instance(name, instance_paths(compute, name), compute.user, install, self._superuser)

    @staticmethod
    def _exists(instance: Instance) -> bool:
        return (instance.paths.data / "PG_VERSION").exists()

    def _all_instances(self) -> list[Instance]:
        assert self._compute is not None
        folder = self._compute.base / "instances"
        names = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
        return [self._instance(name) for name in names]

    def _map_file(self) -> Path:
        assert self._compute is not None
        return self._compute.state / f"instances-{self.storage}.json"

    def _load_map(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(self._map_file().read_text())
            self._where = {str(k): (str(v[0]), str(v[1])) for k, v in data.items()}

    def _place(self, physical: str, instance: str, name: str) -> None:
        if self._where.get(physical) != (instance, name):
            self._where[physical] = (instance, name)
            self._save_map()

    def _unplace(self, physical: str) -> tuple[str, str] | None:
        found = self._where.pop(physical, None)
        if found is not None:
            self._save_map()
        return found

    def _save_map(self) -> None:
        write_private(self._map_file(), json.dumps({k: list(v) for k, v in self._where.items()}))

    def _instance_name(self, branch: Any) -> str:
        """The instance holding `branch`'s databases (its id until one says otherwise)."""
        for db in branch.databases.values():
            placed = self._where.get(db.physical) if db.physical else None
            if placed is not None:
                return placed[0]
        return str(branch.id)

    async def _running(self, name: str) -> Instance:
        """Instance `name`, started when it was suspended."""
        instance = self._instance(name)
        async with self._lock(name):
            if running_pid(instance) is None:
                await asyncio.to_thread(start, instance)
        self._last_used[name] = time.monotonic()
        return instance

    def _state(self) -> Any:
        if self._neon is None:
            raise LocalServerError("the instance data plane has no control plane attached")
        return self._neon.state

    def _branch_of(self, physical: str) -> tuple[Any, str] | None:
        """The branch record naming `physical`, and its name for the database."""
        for branch in self._state().branches.values():
            for db in branch.databases.values():
                if db.physical == physical:
                    return branch, db.name
        return None

    def _placed(self, physical: str) -> tuple[str, str] | None:
        """(instance, database name inside it) of `physical`, placed or by its record."""
        placed = self._where.get(physical)
        if placed is not None:
            return placed
        found = self._branch_of(physical)
        return (self._instance_name(found[0]), found[1]) if found is not None else None

    async def _learn(self, instance: Instance) -> None:
        if self.features is None:
            self.features, self.server_version = await asyncio.to_thread(_features, instance)

    def _spares_later(self, parent: Instance) -> None:
        compute = self._compute
        assert compute is not None
        job = asyncio.ensure_future(asyncio.to_thread(spares.prepare, parent, compute, 1))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _fork(self, source: str, target: str) -> tuple[Instance, str, int] | None:
        """Instance `target` as a fork of `source` now: a spare or a stopped copy when it
        is suspended or runs for no client (suspended first, as its idle timeout would
        do: a stopped copy costs a third of a live one, and the next forks of the same
        state take spares), through its backup functions when a client uses it. Returns
        the stopped parent, its state (`spares.digest`) and checkpoint, or None."""
        compute = self._compute
        assert compute is not None
        parent = self._instance(source)
        async with self._lock(source):
            if running_pid(parent) is not None and not self._in_use(source):
                await self._suspend(parent)
            state = spares.digest(parent) if running_pid(parent) is None else None
            checkpoint = await asyncio.to_thread(lsn_of, parent) if state is not None else None
            await asyncio.to_thread(fork, parent, compute, target)
        self._last_used[target] = time.monotonic()
        if state is None or checkpoint is None:
            return None
        self._spares_later(parent)
        return parent, state, lsn_value(checkpoint)

    def _in_use(self, name: str) -> bool:
        """Whether a client is connected (or logging in) to a branch instance `name` holds."""
        state = self._state()
        for endpoint_id in self.endpoint_connections():
            ep = state.endpoints.get(endpoint_id)
            branch = state.branches.get(ep.branch_id) if ep is not None else None
            if branch is not None and self._instance_name(branch) == name:
                return True
        return False

    # ------------------------------------------------------------------ databases

    async def create_database(self, physical: str, *, owner: str, template: str | None = None,
                              schema_only: bool = False, issued: Callable[[], None] | None = None) -> None:
        found = self._branch_of(physical)
        moment = self._based().asked(physical)
        if found is None:
            # a restore's copy, for a branch record that names it only once the restore
            # is done: a fork of the template's instance, made once for all its databases
            if issued is not None:
                issued()
            if template is not None:
                await self._copy_for_later(physical, template, moment)
            return
        branch, name = found
        target = self._instance_name(branch)
        instance = self._instance(target)
        async with self._lock(target):
            if issued is not None:
                issued()
            if not self._exists(instance):
                await self._make(branch, target, name, owner, template, schema_only=schema_only,
                                 moment=moment)
            else:
                if running_pid(instance) is None:  # the lock is ours: started here
                    await asyncio.to_thread(start, instance)
                self._last_used[target] = time.monotonic()
                await asyncio.to_thread(_apply, instance, {}, [], [(name, name, owner, False)])
        self._place(physical, target, name)

    async def _copy_for_later(self, physical: str, template: str, moment: Moment | None = None) -> None:
        source = self._placed(template)
        if source is None:
            raise LocalServerError(f"no instance holds database {template}")
        pending = self._pending.get(source[0])
        if pending is None or template in pending[1]:
            pending = (f"in-{secrets.token_hex(8)}", set())
            self._pending[source[0]] = pending
            await self._copy_as_of(source[0], pending[0], moment)
            self._dirty_instances.add(pending[0])
        pending[1].add(template)
        self._place(physical, pending[0], source[1])

    async def _make(self, branch: Any, target: str, name: str, owner: str, template: str | None,
                    *, schema_only: bool = False, moment: Moment | None = None) -> None:
        compute, install = self._compute, self.install
        assert compute is not None and install is not None
        source = self._placed(template) if template is not None else None
        if source is not None:
            await self._copy_as_of(source[0], target, moment, based=not schema_only)
            if schema_only:  # every object of the parent, none of its rows (`standby`)
                await asyncio.to_thread(empty_databases, self._instance(target))
                # its history starts without them: a base of the parent's rows would let
                # a moment before the truncations show them
                self._based().take_later(target)
            await self._sync(branch, self._instance(target))
        else:
            password = branch.roles[owner].password
            await asyncio.to_thread(make_root, compute, install, target, owner=owner, database=name,
                                    owner_password=password)
            self._synced[(target, owner)] = password
            self._last_used[target] = time.monotonic()
            self._based().take_later(target)
            self._dirty.add(branch.id)  # its other roles at the first login (a fork was synced above)
        await self._learn(self._instance(target))

    async def drop_database(self, physical: str) -> None:
        found = self._branch_of(physical)
        placed = self._unplace(physical) or self._placed(physical)
        if placed is None:
            return
        target, name = placed
        instance = self._instance(target)
        branch = found[0] if found is not None else None
        async with self._lock(target):
            gone = (branch is None or branch.deleting) and not self._holds_others(target)
            if gone:
                await self._stop_pooler(instance)
                await asyncio.to_thread(remove, instance)
                self._forget(target)
            elif not self._exists(instance):
                return
        if gone:
            await self._based().drop(target)
            return
        await self._running(target)

        def drop() -> None:
            with admin_session(instance) as session:
                session.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))

        await asyncio.to_thread(drop)

    def _holds_others(self, target: str) -> bool:
        """Whether a live branch still has a database in instance `target`."""
        for branch in self._state().branches.values():
            if not branch.deleting and any(
                self._where.get(db.physical or "", ("",))[0] == target for db in branch.databases.values()
            ):
                return True
        return False

    def _forget(self, name: str) -> None:
        if self._replicas is not None:  # its standbys hold a state that is gone
            job = asyncio.ensure_future(self._replicas.drop_source(name))
            self._background.add(job)
            job.add_done_callback(self._background.discard)
        self._lsns.pop(name, None)
        self._copied_lsns.pop(name, None)
        self._last_used.pop(name, None)
        self._dirty_instances.discard(name)
        for key in [key for key in self._synced if key[0] == name]:
            del self._synced[key]

    async def replace_database(self, physical: str, *, template: str, owner: str) -> None:
        """A restore in place: the branch's instance becomes a fork of the source's, once
        per restore (every database of the branch is in that fork)."""
        target, source = self._placed(physical), self._placed(template)
        if target is None or source is None:
            raise LocalServerError(
                "this restore needs a point in time the instance data plane keeps no copy of",
                hint="restore from another branch")
        moment = self._based().asked(physical)
        done = self._reforked.get(target[0])
        if done is None or done[0] != source[0] or physical in done[1]:
            await self._based().drop(target[0])
            async with self._lock(target[0]):
                await self._stop_pooler(self._instance(target[0]))
                await asyncio.to_thread(remove, self._instance(target[0]))
            self._forget(target[0])
            await self._copy_as_of(source[0], target[0], moment)
            self._dirty_instances.add(target[0])
            done = (source[0], set())
            self._reforked[target[0]] = done
        done[1].add(physical)
        self._place(physical, target[0], source[1])

    async def set_database_owner(self, physical: str, owner: str) -> None:
        """The owner (and a rename the API made meanwhile) reach the instance at once."""
        found = self._branch_of(physical)
        if found is not None:
            branch = found[0]
            await self._sync(branch, await self._running(self._instance_name(branch)))

    async def list_databases(self) -> list[str]:
        """The physical names of the databases in an instance that exists: the records'
        and those placed for no record (a refused create's copy, to be dropped)."""
        found: dict[str, None] = {}
        for branch in self._state().branches.values():
            for db in branch.databases.values():
                placed = self._placed(db.physical) if db.physical else None
                if placed is not None and self._exists(self._instance(placed[0])):
                    found[db.physical] = None
        for physical, (name, _) in self._where.items():
            if physical not in found and self._exists(self._instance(name)):
                found[physical] = None
        return list(found)

    def admin_dsn(self, database: str = "postgres") -> str:
        placed = self._placed(database)
        target, name = placed or (self._instance_name(self._state().default_branch), database)
        instance = self._instance(target)
        dsn = (f"postgresql://postgres:{self._superuser.reveal()}@/{name}"
               f"?host={instance.paths.socket_dir}&port=5432")
        register_url(dsn)
        return dsn

    async def admin_url(self, database: str) -> str:
        """`admin_dsn`, its instance started when it is suspended (a fork suspends a
        parent no client uses)."""
        placed = self._placed(database)
        if placed is not None:
            await self._running(placed[0])
        return self.admin_dsn(database)

    # each instance has its own WAL (the history reads one per branch)
    lsn_per_branch = True

    async def current_lsn(self, branch_id: str | None = None) -> str:
        """The WAL position of `branch_id`'s instance (the default branch's when None):
        where its next record goes while it runs, its last checkpoint when stopped."""
        state = self._state()
        branch = state.branches.get(branch_id) if branch_id else None
        name = self._instance_name(branch if branch is not None else state.default_branch)
        async with self._lock(name):  # never while a suspend stops it: pg_control is not final yet
            found = await asyncio.to_thread(lsn_of, self._instance(name))
        if found is not None:
            self._lsns[name] = found
        return self._lsns.get(name, "0/0")

    # ------------------------------------------------------------------ sync

    async def _sync(self, branch: Any, instance: Instance, *, only_marked: bool = False) -> None:
        """Bring `instance` in line with `branch`'s record (see the module); then the
        record learns the databases sessions made or dropped in SQL, as Neon's
        control plane learns them from its compute. One at a time per instance: two
        logins syncing at once would both set a password, and a second salt between
        one login's verifier read and its upstream login fails that login."""
        async with self._locks.setdefault(f"sync:{instance.name}", asyncio.Lock()):
            if only_marked and branch.id not in self._dirty and instance.name not in self._dirty_instances:
                return
            await self._sync_now(branch, instance)

    async def _sync_now(self, branch: Any, instance: Instance) -> None:
        self._dirty.discard(branch.id)
        self._dirty_instances.discard(instance.name)
        key = instance.name
        # a role learnt from the instance has no password of ours (`_learn_roles`)
        passwords = {name: role.password for name, role in branch.roles.items()
                     if role.password and self._synced.get((key, name)) != role.password}
        gone = [name for (owner, name) in self._synced if owner == key and name not in branch.roles]
        databases: list[tuple[str, str, str, bool]] = []
        for db in branch.databases.values():
            if db.physical is None:
                db.physical = self._neon.catalog.new_physical()
            before = self._where.get(db.physical)
            known = before is not None and before[0] == key
            databases.append((before[1] if known and before else db.name, db.name, db.owner_name, known))
            self._place(db.physical, key, db.name)
        try:
            present, dropped, listed = await asyncio.to_thread(_apply, instance, passwords, gone, databases)
        except BaseException:
            self._dirty.add(branch.id)
            raise
        for name, password in passwords.items():
            self._synced[(key, name)] = password
        for name in gone:
            self._synced.pop((key, name), None)
        self._learn_databases(branch, key, present, dropped)
        self._learn_roles(branch, key, listed)
        self._neon.save()

    def _learn_roles(self, branch: Any, key: str, names: set[str]) -> None:
        """Roles sessions made in SQL join the record (the API lists them), without a
        password: theirs stays the one set in SQL, and the API never sets one it
        does not know. One dropped in SQL stays listed until the API deletes it."""
        stamp = iso(now())
        for name in sorted(names - set(branch.roles)):
            branch.roles[name] = RoleRecord(name, stamp, stamp)
            self._synced[(key, name)] = ""

    def _learn_databases(self, branch: Any, key: str, present: Mapping[str, str], dropped: list[str]) -> None:
        for name in dropped:
            db = branch.databases.pop(name, None)
            if db is not None and db.physical:
                self._unplace(db.physical)
        # placed under a physical name the record no longer has: the API deleted it and
        # its drop has not run yet, so it is not a database a session made
        named = {db.physical for db in branch.databases.values()}
        leaving = {placed[1] for physical, placed in self._where.items()
                   if placed[0] == key and physical not in named}
        stamp = iso(now())
        for name, owner in present.items():
            if name not in branch.databases and name not in leaving:
                physical = self._neon.catalog.new_physical()
                branch.databases[name] = DatabaseRecord(
                    database_id(branch.id, name), name, owner, stamp, stamp, physical)
                self._place(physical, key, name)

    async def learn_databases(self, branch: Any) -> None:
        """Tell `branch`'s record of the databases its sessions made or dropped in SQL
        (the API's database routes ask first), when its instance runs: a suspended one
        was asked before it stopped."""
        if branch.deleting or self._neon is None:
            return
        instance = self._instance(self._instance_name(branch))
        # the instance's lock: a suspend stops it under that lock, and a session opened
        # while it shuts down is refused ("the database system is shutting down")
        async with self._lock(instance.name):
            if self._exists(instance) and running_pid(instance) is not None:
                await self._sync(branch, instance)

    # ------------------------------------------------------------------ endpoints

    async def _route(self, endpoint_id: str, at: TimeTravel | None = None) -> Route:
        ep, branch = serving(self._state(), endpoint_id)

        def made() -> bool:
            return bool(branch.deleting) or self._exists(self._instance(self._instance_name(branch)))

        if not made():  # a fork still copying: wait, as for a compute starting
            await wait_until_async(made, timeout=_MADE_WAIT, backoff=_MADE_POLL)
        name = self._instance_name(branch)
        if branch.deleting or not self._exists(self._instance(name)):
            raise Refusal("08006", f"endpoint {endpoint_id} has no compute")
        instance = await self._running(name)  # waits for a fork or restore of it to end
        await self._based().ready(name)  # its history starts with its base: no session before
        if branch.id in self._dirty or name in self._dirty_instances:
            await self._sync(branch, instance, only_marked=True)
        if ep.current_state == "idle":  # a suspended compute wakes on a connection
            ep.current_state, ep.started_at = "active", iso(now())
        if at is not None:
            return await self._reads().time_travel(branch, instance, at)
        if ep.type == "read_only":
            return await self._reads().read_only(endpoint_id, instance)
        pooler = functools.partial(self._poolers.route, instance) if self._poolers is not None else None
        return Route(socket_file(instance.paths), functools.partial(self._verifier, instance), pooler=pooler)

    async def _suspend(self, instance: Instance) -> None:
        """Stop `instance` (its lock held) once no base is being copied from it; its
        branches' records learn first what sessions made, its PgBouncer stops before it."""
        await self._based().settled(instance.name)
        await self._learn_before_suspend(self._state(), instance)
        await self._stop_pooler(instance)
        await asyncio.to_thread(stop, instance)

    async def _learn_before_suspend(self, state: Any, instance: Instance) -> None:
        for branch in list(state.branches.values()):
            if not branch.deleting and self._instance_name(branch) == instance.name:
                with contextlib.suppress(LocalServerError, psycopg.Error):
                    await self._sync(branch, instance)

    async def _stop_pooler(self, instance: Instance) -> None:
        """Before its instance stops or goes: PgBouncer's pooled sessions would break anyway."""
        if self._poolers is not None:
            await self._poolers.stop(instance)

    async def _verifier(self, instance: Instance, role: str, database: str) -> str | None:
        return await asyncio.to_thread(read_verifier, instance, role, database)

    def _reads(self) -> Reads:
        if self._replicas is None:
            raise LocalServerError("the data plane is not started")
        return Reads(self._neon, self._replicas, self._instance, self._instance_name, self._running,
                     self._based().replay)

    # ------------------------------------------------------------------ points in time
    #
    # Every instance gets a base and keeps its WAL since (`compute.moments.bases`, `compute.moments.pitr`):
    # a moment of a branch at or after its base is its base and WAL replayed. The
    # control plane's history asks `replayable` when no branch holds the moment as it is.

    def _spawn(self, work: Awaitable[None]) -> None:
        job = asyncio.ensure_future(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    def replayable(self, branch: Any, moment: float | None, lsn: int | None) -> bool:
        return self._bases is not None and self._bases.replayable(self._instance_name(branch), moment, lsn)

    def replayable_since(self, branch: Any) -> str | None:
        return self._bases.since(self._instance_name(branch)) if self._bases is not None else None

    def replay_for(self, physicals: list[str], moment: float, lsn: str | None) -> None:
        """The copies `physicals` (a create's or a restore's) are their templates as of
        the point, replayed, not as they are now."""
        self._based().ask(physicals, moment, lsn)

    def _based(self) -> Bases:
        if self._bases is None:
            raise LocalServerError("the data plane is not started")
        return self._bases

    async def _copy_as_of(self, source: str, target: str, moment: Moment | None, *,
                          based: bool = True) -> None:
        """Instance `target`: a fork of `source` now, or its replay to `moment`; with its
        base when `based` (else the caller takes it)."""
        stopped = None
        if moment is None:
            stopped = await self._fork(source, target)
        else:
            parent = await self._running(source)
            async with self._lock(source):
                await asyncio.to_thread(self._based().replay, parent, target, moment, True)
            self._last_used[target] = time.monotonic()
        # before its base checkpoints it; the history's read after the copy names a
        # copy only while the source stays quiet, which a replay's source is not
        found = await asyncio.to_thread(copied_lsn, self._instance(target))
        if found is not None:
            self._copied_lsns[target] = found
        if not based:
            return
        if stopped is not None:  # it started from a copy of the stopped parent: so does its base
            self._based().share(target, *stopped)
        else:
            self._based().take_later(target)

    def copy_lsn(self, branch: Any) -> str | None:
        """The source's LSN that `branch`'s instance was copied as of (its `parent_lsn`),
        when this server made it."""
        return self._copied_lsns.get(self._instance_name(branch))

    @property
    def listeners(self) -> Listeners:
        if self._listeners is None:
            raise LocalServerError("the data plane is not started")
        return self._listeners

    async def open_endpoint(self, endpoint_id: str, *, direct_port: int = 0,
                            pooled_port: int = 0) -> EndpointAddress:
        """The relay's listeners: the branch's instance decides who may log in."""
        self._mark(endpoint_id)
        return await self.listeners.open(endpoint_id, direct_port=direct_port,
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
        if self._replicas is not None:
            await self._replicas.drop(f"ep:{endpoint_id}")

    # ------------------------------------------------------------------ snapshots
    #
    # A snapshot is an instance of its own (`cathouse_harness.local.snapshots`), never
    # started: a copy of the branch's instance as it was, which outlives the branch and
    # its WAL. Its databases are placed in it like any, so a restore copies them as a
    # create copies a parent's (a fork of a stopped instance).

    async def take_snapshot(self, branch: Any, name: str, placed: Mapping[str, str],
                            at: tuple[float, str | None] | None = None) -> str | None:
        """Instance `name`: `branch`'s instance now, or replayed to the point `at` (epoch
        seconds, LSN), stopped; `placed` (physical -> name inside) are its databases.
        Returns the source's WAL position when the copy is of its head."""
        compute = self._compute
        assert compute is not None
        source = self._instance_name(branch)
        lsn = None
        if at is None:
            parent = self._instance(source)
            async with self._lock(source):
                # a running source is copied live: its first start (a restore's) recovers it
                await asyncio.to_thread(fork, parent, compute, name, run=False)
                lsn = await asyncio.to_thread(lsn_of, parent)
        else:
            parent = await self._running(source)
            async with self._lock(source):
                copy = await asyncio.to_thread(self._based().replay, parent, name, moment_of(*at), True)
            await asyncio.to_thread(stop, copy)
        for physical, database in placed.items():
            self._place(physical, name, database)
        return lsn

    def snapshot_kept(self, name: str) -> bool:
        return self._compute is not None and self._exists(self._instance(name))

    async def drop_snapshot(self, name: str, physicals: list[str]) -> None:
        """Snapshot instance `name` and the spares a restore's fork prepared of it go."""
        compute = self._compute
        assert compute is not None
        for physical in physicals:
            self._unplace(physical)
        async with self._lock(name):
            await asyncio.to_thread(remove, self._instance(name))
            folder = compute.base / "spares"
            for entry in (sorted(folder.iterdir()) if folder.is_dir() else []):
                if entry.name.startswith(f"{name}."):
                    await asyncio.to_thread(remove_tree, entry, owners={compute.user.uid, os.geteuid()})
        self._forget(name)

    # ------------------------------------------------------------------ preload libraries

    async def preload_libraries_here(self) -> dict[str, str]:
        """Of Neon's shared preload libraries, those this PostgreSQL has: name -> the
        version of its extension ("" when only the library is installed)."""
        instance = await self._running(self._instance_name(self._state().default_branch))
        return await asyncio.to_thread(_preload_here, instance)

    async def set_preload_libraries(self, names: list[str], branch: Any = None) -> None:
        """`shared_preload_libraries` of every branch's instance (or `branch`'s), by ALTER
        SYSTEM (so the forks made later have it too); a running instance restarts with
        it, as Neon restarts a project's computes to apply the setting."""
        value = ",".join(names)
        branches = [branch] if branch is not None else list(self._state().branches.values())
        for name in sorted({self._instance_name(b) for b in branches if not b.deleting}):
            instance = self._instance(name)
            if not self._exists(instance):
                continue
            async with self._lock(name):
                await self._stop_pooler(instance)
                await asyncio.to_thread(_set_preload, instance, value)

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
        if self._replicas is not None:
            await self._replicas.drop_idle(min(self.suspend_after, REPLICA_IDLE))
        moment = time.monotonic()
        for endpoint_id in self.endpoint_connections():
            ep = state.endpoints.get(endpoint_id)
            branch = state.branches.get(ep.branch_id) if ep is not None else None
            if branch is not None:
                self._last_used[self._instance_name(branch)] = moment
        for name, used in list(self._last_used.items()):
            if moment - used < self.suspend_after:
                continue
            lock = self._lock(name)
            if lock.locked():
                continue
            async with lock:
                instance = self._instance(name)
                if running_pid(instance) is not None:
                    log.info("instance %s idle for %.0f s: suspended", name, moment - used)
                    await self._suspend(instance)
                self._last_used.pop(name, None)
