"""The control plane of the local Neon server: its state, lookups and endpoints.

`LocalNeon` owns the state (`cathouse_harness.local.control.state`) and drives the data plane
(`cathouse_harness.local.dataplane.DataPlane`): a branch's databases are PostgreSQL databases
copied from its parent's, an endpoint is a pair of TCP listeners (direct and pooled) in
front of them. The mutations live beside it, one module per kind of object:
`branching` (branches), `computes` (endpoints), `catalog` (roles and databases, and the
gate that admits each connection), `reaper` (expired branches); `operations` runs them
and holds the project's lock, `persist` writes the state.

Hosts: an endpoint's `host` and `pooler_host` are its names served by one router on
5432 (names mode, `cathouse_harness.local.data.names`, where `*.localhost` resolves), or two loopback
addresses of its own, each listening on 5432 (`cathouse_harness.local.data.hosts`); the URLs handed
out say them with no port, as Neon's do, naming the home's CA (verify-full): a URL built from `host` alone
reaches the branch directly, one built from `pooler_host` goes through PgBouncer. Where
the machine cannot bind them, both are `127.0.0.1` and only `connection_uri` reaches the
endpoint (it carries the endpoint's kernel-picked ports). Clients that build the pooled
host by inserting `-pooler` into `host` cannot (an address has no endpoint id to
extend): they reach the direct listener.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cathouse_harness.errors import ApiError
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.core import DataPlaneLike
from cathouse_harness.local.control.operations import Operations
from cathouse_harness.local.control.persist import StateWriter
from cathouse_harness.local.control.state import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    LocalState,
    iso,
    load_state,
    new_state,
    now,
    parse_time,
)
from cathouse_harness.local.sim.faults import FaultInjector
from cathouse_harness.local.sim.latency import NO_LATENCY, LatencyProfile
from cathouse_harness.support.log import get_logger

# the harness's own annotation: a dev branch keeps the server up (see idle_seconds)
from cathouse_harness.support.marks import MARK_KIND
from cathouse_harness.support.redact import register_secret

log = get_logger("local.control")

# What /users/me advertises and creates are held to.
DEFAULT_BRANCHES_LIMIT = 5000
# Root branches (the project's own and schema-only ones). Neon's reference names the
# limit (`max_root_branches` in its Limits object) but not its value, and no route that
# answers it; this figure is ours (docs/embedded.md, the table of what still differs).
DEFAULT_ROOT_BRANCHES_LIMIT = 10


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} {ident} not found")


class LocalNeon:
    def __init__(
        self,
        home: Path,
        dataplane: DataPlaneLike,
        *,
        storage: str = "memory",
        faults: FaultInjector | None = None,
        latency: LatencyProfile = NO_LATENCY,
        reap_interval: float = 1.0,
        branches_limit: int = DEFAULT_BRANCHES_LIMIT,
        root_branches_limit: int = DEFAULT_ROOT_BRANCHES_LIMIT,
        database: str | None = None,
        role: str | None = None,
    ) -> None:
        """`database` and `role` name what a new project is made with (None: Neon's
        `neondb` / `neondb_owner`); a home's existing project keeps its own."""
        from cathouse_harness.local.control.branching import Branching
        from cathouse_harness.local.control.catalog import Catalog
        from cathouse_harness.local.control.computes import Computes
        from cathouse_harness.local.control.history import History
        from cathouse_harness.local.control.reaper import Reaper
        from cathouse_harness.local.snapshots import Snapshots

        self.home = home
        self.dataplane = dataplane
        self.storage = storage
        self.faults = faults or FaultInjector()
        self.latency = latency
        self.branches_limit = branches_limit
        self.root_branches_limit = root_branches_limit
        self._new_names = {
            key: value for key, value in (("database_name", database), ("role_name", role)) if value
        }
        self.last_activity = time.monotonic()
        self._answering = 0  # API requests being answered now
        self._state: LocalState | None = None
        self._addresses: dict[str, Any] = {}
        self.writer = StateWriter(home, lambda: self.state)
        self.ops = Operations(lambda: self.state, self.save, self.faults, latency)
        self.catalog = Catalog(self)
        self.computes = Computes(self)
        self.branching = Branching(self)
        self.history = History(self)
        self.snapshots = Snapshots(self)
        self.reaper = Reaper(self, reap_interval)

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> LocalState:
        if self._state is None:
            raise RuntimeError("LocalNeon.start() has not run")
        return self._state

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.writer.open()
        if hasattr(self.dataplane, "on_activity"):
            self.dataplane.on_activity = self._on_connection
        if hasattr(self.dataplane, "branch_endpoint"):
            self.dataplane.branch_endpoint = self._read_write_endpoint
        await self.dataplane.start()
        state = load_state(self.home, self.storage)
        fresh = state is None
        if state is None:
            state = new_state(storage=self.storage, **self._new_names)
            log.info(
                "new local project %s in %s (database %s, role %s)",
                state.project_id, self.home, state.database_name, state.role_name,
            )
        self._state = state
        for branch in state.branches.values():
            for role in branch.roles.values():
                register_secret(role.password)
        await self._reconcile(fresh=fresh)
        await self.snapshots.reconcile()
        self.flush()
        self.reaper.start()

    async def stop(self, *, stop_postgres: bool = True) -> None:
        await self.reaper.stop()
        await self.history.stop()
        await self.ops.cancel_tasks()
        if self._state is not None:
            self.flush()
        self.writer.close()
        await self.dataplane.stop(stop_postgres=stop_postgres)

    def save(self) -> None:
        self.writer.save()

    def flush(self) -> None:
        self.writer.flush()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """An API request being answered: the server is in use until the answer is sent,
        however long it takes (a fork copying an instance, a compute starting under load
        can outlast a short idle timeout), and idle counts from its end, not its start."""
        self._answering += 1
        self.touch()
        try:
            yield
        finally:
            self._answering -= 1
            self.touch()

    def _on_connection(self) -> None:
        """A client connected to or left an endpoint: the server is in use, and the
        branch's data may change while one is connected (`cathouse_harness.local.control.history`)."""
        self.touch()
        if self._state is not None:
            self.history.observe(self.dataplane.endpoint_connections())

    def idle_seconds(self) -> float:
        """How long nothing has used this server. API requests and client connections
        to endpoints count; while a request is being answered, a connection is open or an
        unexpired dev branch exists (a developer's `.env` points at it) the server is
        never idle."""
        connections = getattr(self.dataplane, "open_connections", None)
        if self._answering or (connections is not None and connections()) or self._dev_branch_alive():
            self.touch()
        return time.monotonic() - self.last_activity

    def _dev_branch_alive(self) -> bool:
        current = now()
        return any(
            (branch.annotation or {}).get(MARK_KIND) == "dev"
            and (not branch.expires_at or parse_time(branch.expires_at) > current)
            for branch in self.live_branches()
        )

    async def _reconcile(self, *, fresh: bool) -> None:
        """Make the state agree with the databases that exist, and reopen endpoints."""
        state = self.state
        existing = set(await self.dataplane.list_databases())
        for branch in list(state.branches.values()):
            if branch.deleting:
                for db in branch.databases.values():
                    if db.physical in existing:
                        await self.dataplane.drop_database(db.physical)
                self.forget_branch(branch.id)
        for branch in list(state.branches.values()):
            lost = [db for db in branch.databases.values() if db.physical and db.physical not in existing]
            if lost and not branch.default:
                log.warning("branch %s (%s) lost its databases; forgetting it", branch.id, branch.name)
                self.forget_branch(branch.id)
                continue
            for db in lost:
                if not fresh:
                    log.warning("database %s of the default branch was gone; starting it empty", db.name)
                assert db.physical is not None
                await self.dataplane.create_database(db.physical, owner=db.owner_name)
            if branch.current_state != "ready":
                self.set_branch_state(branch, "ready")
        for op in state.operations.values():
            if op.unfinished:
                self.ops.end(op, "cancelled", "the local server restarted")
        main = state.default_branch
        if not any(ep.branch_id == main.id for ep in state.endpoints.values()):
            stamp = iso(now())
            ep = EndpointRecord(id=ids.endpoint_id(), branch_id=main.id, created_at=stamp, updated_at=stamp)
            state.endpoints[ep.id] = ep
        for ep in list(state.endpoints.values()):
            await self.open_endpoint(ep, reuse_ports=True)
            if ep.current_state != "idle":
                ep.current_state = "active"
            ep.pending_state = None

    def forget_branch(self, branch_id: str) -> None:
        state = self.state
        state.branches.pop(branch_id, None)
        self.history.forget(branch_id)
        for ep_id in [e.id for e in state.endpoints.values() if e.branch_id == branch_id]:
            del state.endpoints[ep_id]
            self._addresses.pop(ep_id, None)

    async def open_endpoint(self, ep: EndpointRecord, *, reuse_ports: bool = False) -> None:
        """Listeners for `ep`, on its old ports when asked and free (the branch's
        instance decides who may log in)."""
        address = None
        if reuse_ports and ep.direct_port:
            try:
                address = await self.dataplane.open_endpoint(
                    ep.id, direct_port=ep.direct_port, pooled_port=ep.pooled_port
                )
            except Exception as exc:  # the old port may be taken by now
                log.warning(
                    "endpoint %s cannot reopen on port %s (%s); using a new port",
                    ep.id,
                    ep.direct_port,
                    exc.__class__.__name__,
                )
        if address is None:
            address = await self.dataplane.open_endpoint(ep.id)
        self._addresses[ep.id] = address
        ep.direct_port = address.direct_port
        ep.pooled_port = address.pooled_port
        ep.pooled_via_pgbouncer = address.pooled_via_pgbouncer
        ep.tls = address.tls

    async def close_endpoint(self, ep: EndpointRecord) -> None:
        await self.dataplane.close_endpoint(ep.id)
        self._addresses.pop(ep.id, None)

    # ------------------------------------------------------------------ lookups

    def check_project(self, project_id: str) -> None:
        if project_id != self.state.project_id:
            raise not_found("project", project_id)

    def live_branches(self) -> list[BranchRecord]:
        return [b for b in self.state.branches.values() if not b.deleting]

    def branch(self, branch_id: str) -> BranchRecord:
        found = self.state.branches.get(branch_id)
        if found is None or found.deleting:
            raise not_found("branch", branch_id)
        return found

    def children(self, branch_id: str) -> list[BranchRecord]:
        return [b for b in self.live_branches() if b.parent_id == branch_id]

    def endpoint(self, endpoint_id: str) -> EndpointRecord:
        found = self.state.endpoints.get(endpoint_id)
        if found is None or self.state.branches[found.branch_id].deleting:
            raise not_found("endpoint", endpoint_id)
        return found

    def live_endpoints(self) -> list[EndpointRecord]:
        live = {b.id for b in self.live_branches()}
        return [ep for ep in self.state.endpoints.values() if ep.branch_id in live]

    def _read_write_endpoint(self, branch_id: str) -> str | None:
        found = [e.id for e in self.branch_endpoints(branch_id) if e.type == "read_write"]
        return found[0] if found else None

    def branch_endpoints(self, branch_id: str) -> list[EndpointRecord]:
        return [e for e in self.state.endpoints.values() if e.branch_id == branch_id]

    def set_branch_state(self, branch: BranchRecord, current: str, pending: str | None = None) -> None:
        stamp = iso(now())
        branch.current_state = current
        branch.pending_state = pending
        branch.state_changed_at = stamp
        branch.updated_at = stamp

    # ------------------------------------------------------------------ URLs

    def endpoint_host(self, ep: EndpointRecord, *, pooled: bool = False) -> str:
        """The endpoint's `host` (or `pooler_host`): its own loopback address where it has
        them (a URL built from it alone connects, `cathouse_harness.local.data.hosts`), else 127.0.0.1."""
        address = self._addresses.get(ep.id)
        own = address.own_hosts if address is not None else None
        if own is not None:
            return own[1] if pooled else own[0]
        return address.host if address is not None else "127.0.0.1"

    def connection_uri(
        self,
        *,
        branch_id: str | None,
        endpoint_id: str | None,
        database_name: str | None,
        role_name: str | None,
        pooled: bool,
    ) -> str:
        if not database_name or not role_name:
            raise ApiError(400, "BAD_REQUEST", "database_name and role_name are required")
        branch = self.branch(branch_id) if branch_id else self.state.default_branch
        if endpoint_id:
            ep = self.endpoint(endpoint_id)
            if ep.branch_id != branch.id:
                raise ApiError(
                    400, "BAD_REQUEST", f"endpoint {endpoint_id} does not belong to branch {branch.id}"
                )
        else:
            eps = sorted(self.branch_endpoints(branch.id), key=lambda e: e.type != "read_write")
            if not eps:
                raise not_found("endpoint of branch", branch.id)
            ep = eps[0]
        self.catalog.database(branch, database_name)
        self.catalog.role(branch, role_name)
        return self.build_uri(ep, database_name, role_name, pooled=pooled)

    def build_uri(self, ep: EndpointRecord, database: str, role: str, *, pooled: bool) -> str:
        address = self._addresses.get(ep.id)
        ca_file = address.ca_file if address is not None else None
        host = self.endpoint_host(ep, pooled=pooled)
        if address is None or address.own_hosts is None:
            # no addresses of its own: 127.0.0.1, told apart by the kernel-picked ports
            host = f"{host}:{ep.pooled_port if pooled else ep.direct_port}"
        query = ""
        if ep.tls and ca_file:
            # verify-full against the home's CA: whoever takes the port once this server
            # is gone cannot complete the handshake, so never sees a password (#14 item 3)
            query = f"?sslmode=verify-full&sslrootcert={quote(ca_file, safe='/')}"
        elif ep.tls:
            query = "?sslmode=require"
        password = self.state.branches[ep.branch_id].roles[role].password
        return (
            f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}"
            f"@{host}/{quote(database, safe='')}{query}"
        )

    def connections(
        self, branch: BranchRecord, eps: list[EndpointRecord]
    ) -> list[tuple[EndpointRecord, DatabaseRecord]]:
        """What a create lists in `connection_uris`: each database through the branch's
        read-write endpoint, the configured database first."""
        writable = [ep for ep in eps if ep.type == "read_write"]
        if not writable:
            return []
        first = self.state.database_name
        ordered = sorted(branch.databases.values(), key=lambda db: db.name != first)
        return [(writable[0], db) for db in ordered if db.owner_name in branch.roles]
