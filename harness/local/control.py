"""The control plane of the local Neon server: branches, endpoints, operations, locks.

`LocalNeon` owns the state (`harness.local.state`) and drives the data plane
(`harness.local.dataplane.DataPlane`): a branch is a PostgreSQL database copied from its
parent's, an endpoint is a pair of TCP listeners (direct and pooled) in front of it.
Every mutation is checked and recorded synchronously (so two requests never race on the
same branch: the server runs on one event loop and nothing awaits between check and
record), answered at once with `scheduling` operations, and carried out by a background
task that moves the operations to `running` and `finished` (or `failed`).

Locks are per branch, not per project as on Neon: a mutation of a branch with unfinished
operations, a child of a branch whose own operations are unfinished, and a delete or
restore of a branch that is being copied answer 423 until the operations end.

Hosts: URLs always use the data plane's address (`127.0.0.1`) with the endpoint's own
port, because a local machine cannot route `ep-…` host names. An endpoint object's
`host` carries the endpoint id (`ep-….localhost`) only when such names resolve to
127.0.0.1 on this machine; otherwise it is `127.0.0.1`, and the ports are given beside
it (`port`, `pooler_port`). Clients that build the pooled host by inserting `-pooler`
cannot reach the pooled port that way; they should ask `connection_uri?pooled=true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

# the harness's own annotation: a dev branch keeps the server up (see idle_seconds)
from harness.branches import MARK_KIND
from harness.local import ids
from harness.local.faults import FaultInjector
from harness.local.state import (
    BranchRecord,
    EndpointRecord,
    LocalState,
    OperationRecord,
    iso,
    load_state,
    new_state,
    now,
    parse_time,
    state_snapshot,
    write_private,
)
from harness.log import get_logger
from harness.redact import register_secret, scrub

log = get_logger("local.control")

MAX_EXPIRY = timedelta(days=30)
MAX_NAME = 256


class EndpointAddressLike(Protocol):
    endpoint_id: str
    host: str
    direct_port: int
    pooled_port: int
    pooled_via_pgbouncer: bool
    tls: bool


class DataPlaneLike(Protocol):
    """What the control plane needs from `harness.local.dataplane.DataPlane`."""

    async def start(self) -> None: ...
    async def stop(self, *, stop_postgres: bool = True) -> None: ...
    async def ensure_role(self, role: str, password: str) -> None: ...
    async def create_database(
        self,
        physical: str,
        *,
        owner: str,
        template: str | None = None,
        schema_only: bool = False,
        issued: Callable[[], None] | None = None,
    ) -> None: ...
    async def drop_database(self, physical: str) -> None: ...
    async def replace_database(self, physical: str, *, template: str, owner: str) -> None: ...
    async def list_databases(self) -> list[str]: ...
    async def open_endpoint(
        self,
        endpoint_id: str,
        *,
        databases: Mapping[str, str],
        direct_port: int = 0,
        pooled_port: int = 0,
    ) -> Any: ...
    async def close_endpoint(self, endpoint_id: str) -> None: ...


class ApiError(Exception):
    """An error answer: HTTP status, Neon-style code and a message safe to show."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _InjectedFailure(Exception):
    pass


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} {ident} not found")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def _localhost_names_resolve() -> bool:
    """True when `<anything>.localhost` resolves to 127.0.0.1 only (systemd-resolved does)."""
    try:
        infos = socket.getaddrinfo("ep-probe-cathouse.localhost", None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(info[4][0] == "127.0.0.1" for info in infos)


# How long a state change waits for its snapshot (~0.5 ms of the loop). Taken at once,
# it ran between a finished operation and the GET waiting for it, and between a copy's
# first query and its reply: both on every fork's path. A few milliseconds later the
# loop is idle (a copy is running in PostgreSQL, or the answer is out), and the changes
# of those milliseconds share one snapshot. `flush` and `stop` still write at once.
SAVE_DELAY = 0.004
# At most this long a create's answer waits for its copy to be sent to PostgreSQL.
COPY_ISSUE_WAIT = 0.05


def _wake(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _report_failed_write(written: Future[None]) -> None:
    error = written.exception()
    if error is not None:
        log.error("cannot write the local server's state: %s", error)


class LocalNeon:
    def __init__(
        self,
        home: Path,
        dataplane: DataPlaneLike,
        *,
        storage: str = "memory",
        faults: FaultInjector | None = None,
        reap_interval: float = 1.0,
    ) -> None:
        self.home = home
        self.dataplane = dataplane
        self.storage = storage
        self.faults = faults or FaultInjector()
        self.reap_interval = reap_interval
        self.last_activity = time.monotonic()
        self._state: LocalState | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._copying: Counter[str] = Counter()
        self._reaper: asyncio.Task[None] | None = None
        self._named_hosts = False
        self._addresses: dict[str, Any] = {}
        self._save_timer: asyncio.TimerHandle | None = None
        # Writes the state file while started (see save); one thread keeps them in order.
        self._writer: ThreadPoolExecutor | None = None
        # GETs waiting for an operation to settle (see wait_settled): a future each, by
        # operation id.
        self._op_settled: dict[str, list[asyncio.Future[None]]] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> LocalState:
        if self._state is None:
            raise RuntimeError("LocalNeon.start() has not run")
        return self._state

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cathouse-state")
        self._named_hosts = _localhost_names_resolve()
        if hasattr(self.dataplane, "on_activity"):
            self.dataplane.on_activity = self.touch
        await self.dataplane.start()
        state = load_state(self.home, self.storage)
        fresh = state is None
        if state is None:
            state = new_state(storage=self.storage)
            log.info("new local project %s in %s", state.project_id, self.home)
        register_secret(state.role_password)
        self._state = state
        await self.dataplane.ensure_role(state.role_name, state.role_password)
        await self._reconcile(fresh=fresh)
        self.flush()
        self._reaper = asyncio.create_task(self._reap_forever(), name="cathouse-reaper")

    async def stop(self, *, stop_postgres: bool = True) -> None:
        tasks = [t for t in (self._reaper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._state is not None:
            self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        await self.dataplane.stop(stop_postgres=stop_postgres)

    def save(self) -> None:
        """Persist the state: taken SAVE_DELAY from now, written by the writer thread.

        Every operation step calls this, often several times in one step (an operation
        ends and the next begins); one snapshot for all of them is enough. The file write (about
        a millisecond) happens off the loop, so it never sits between a finished copy and
        the answer that reports it.
        """
        if self._save_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._save_timer = loop.call_later(SAVE_DELAY, self._save_now)

    def _save_now(self, *, wait: bool = False) -> None:
        if self._save_timer is not None:
            self._save_timer.cancel()  # when flush() comes first
            self._save_timer = None
        path, text = state_snapshot(self.state, self.home)
        if self._writer is None:
            write_private(path, text)
            return
        written = self._writer.submit(write_private, path, text)
        if wait:
            written.result()
        else:
            written.add_done_callback(_report_failed_write)

    def flush(self) -> None:
        """Write the state now, after any write still queued."""
        self._save_now(wait=True)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """How long nothing has used this server. API requests and client connections
        to endpoints count; while a connection is open or an unexpired dev branch exists
        (a developer's `.env` points at it) the server is never idle."""
        connections = getattr(self.dataplane, "open_connections", None)
        if (connections is not None and connections()) or self._dev_branch_alive():
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
                if branch.physical in existing:
                    await self.dataplane.drop_database(branch.physical)
                self._forget_branch(branch.id)
        main = state.branches[state.default_branch_id]
        if main.physical not in existing:
            if not fresh:
                log.warning("the default branch's database was gone; starting it empty")
            await self.dataplane.create_database(main.physical, owner=state.role_name)
        for branch in list(state.branches.values()):
            if branch.default:
                pass
            elif branch.physical not in existing:
                log.warning("branch %s (%s) lost its database; forgetting it", branch.id, branch.name)
                self._forget_branch(branch.id)
                continue
            if branch.current_state != "ready":
                self._set_branch_state(branch, "ready")
        for op in state.operations.values():
            if op.unfinished:
                self._end_op(op, "cancelled", "the local server restarted")
        if not any(ep.branch_id == main.id for ep in state.endpoints.values()):
            stamp = iso(now())
            ep = EndpointRecord(id=ids.endpoint_id(), branch_id=main.id, created_at=stamp, updated_at=stamp)
            state.endpoints[ep.id] = ep
        for ep in list(state.endpoints.values()):
            await self._open(ep, reuse_ports=True)
            ep.current_state, ep.pending_state = "active", None

    def _forget_branch(self, branch_id: str) -> None:
        state = self.state
        state.branches.pop(branch_id, None)
        for ep_id in [e.id for e in state.endpoints.values() if e.branch_id == branch_id]:
            del state.endpoints[ep_id]
            self._addresses.pop(ep_id, None)

    async def _open(self, ep: EndpointRecord, *, reuse_ports: bool = False) -> None:
        branch = self.state.branches[ep.branch_id]
        databases = {self.state.database_name: branch.physical}
        address = None
        if reuse_ports and ep.direct_port:
            try:
                address = await self.dataplane.open_endpoint(
                    ep.id,
                    databases=databases,
                    direct_port=ep.direct_port,
                    pooled_port=ep.pooled_port,
                )
            except Exception as exc:  # the old port may be taken by now
                log.warning(
                    "endpoint %s cannot reopen on port %s (%s); using a new port",
                    ep.id,
                    ep.direct_port,
                    exc.__class__.__name__,
                )
        if address is None:
            address = await self.dataplane.open_endpoint(ep.id, databases=databases)
        self._addresses[ep.id] = address
        ep.direct_port = address.direct_port
        ep.pooled_port = address.pooled_port
        ep.pooled_via_pgbouncer = address.pooled_via_pgbouncer
        ep.tls = address.tls

    # ------------------------------------------------------------------ lookups

    def live_branches(self) -> list[BranchRecord]:
        return [b for b in self.state.branches.values() if not b.deleting]

    def branch(self, branch_id: str) -> BranchRecord:
        found = self.state.branches.get(branch_id)
        if found is None or found.deleting:
            raise not_found("branch", branch_id)
        return found

    def endpoint(self, endpoint_id: str) -> EndpointRecord:
        found = self.state.endpoints.get(endpoint_id)
        if found is None or self.state.branches[found.branch_id].deleting:
            raise not_found("endpoint", endpoint_id)
        return found

    def branch_endpoints(self, branch_id: str) -> list[EndpointRecord]:
        return [e for e in self.state.endpoints.values() if e.branch_id == branch_id]

    def operation(self, op_id: str) -> OperationRecord:
        found = self.state.operations.get(op_id)
        if found is None:
            raise not_found("operation", op_id)
        return found

    async def wait_settled(self, op: OperationRecord, timeout: float) -> None:
        """Wait up to `timeout` seconds for a scheduled or running operation to settle.

        Lets a GET of an operation answer the moment it finishes instead of the client
        sleeping between polls; the answer may still say `running`, as Neon's may."""
        if op.status not in ("scheduling", "running") or timeout <= 0:
            return
        # A bare future, not Event + wait_for (which runs event.wait() as a task of its
        # own): the GET resumes in the very next loop step after the operation ends. One
        # future per waiter, because a GET cancelled (client gone) cancels what it awaits.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._op_settled.setdefault(op.id, [])
        waiters.append(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._op_settled.get(op.id) is waiters:
                del self._op_settled[op.id]

    def check_project(self, project_id: str) -> None:
        if project_id != self.state.project_id:
            raise not_found("project", project_id)

    def endpoint_host(self, ep: EndpointRecord, *, pooled: bool = False) -> str:
        if self._named_hosts:
            return f"{ep.id}-pooler.localhost" if pooled else f"{ep.id}.localhost"
        return self._address_host(ep)

    def _address_host(self, ep: EndpointRecord) -> str:
        address = self._addresses.get(ep.id)
        return address.host if address is not None else "127.0.0.1"

    def children(self, branch_id: str) -> list[BranchRecord]:
        return [b for b in self.live_branches() if b.parent_id == branch_id]

    def _blocking_op(self, branch_id: str) -> OperationRecord | None:
        for op in self.state.operations.values():
            if op.branch_id == branch_id and op.unfinished:
                return op
        return None

    def _check_unlocked(self, branch: BranchRecord, *, copies_block: bool) -> None:
        blocking = self._blocking_op(branch.id)
        if blocking is not None:
            raise ApiError(
                423,
                "LOCKED",
                f"branch {branch.id} already has running operations, blocking operation id: "
                f"{blocking.id}; please retry later",
            )
        if copies_block and self._copying[branch.id]:
            raise ApiError(
                423,
                "LOCKED",
                f"branch {branch.id} is being copied to a new branch; please retry later",
            )

    # ------------------------------------------------------------------ URLs

    def connection_uri(
        self,
        *,
        branch_id: str | None,
        endpoint_id: str | None,
        database_name: str | None,
        role_name: str | None,
        pooled: bool,
    ) -> str:
        state = self.state
        if not database_name or not role_name:
            raise bad_request("database_name and role_name are required")
        branch = self.branch(branch_id or state.default_branch_id)
        if endpoint_id:
            ep = self.endpoint(endpoint_id)
            if ep.branch_id != branch.id:
                raise bad_request(f"endpoint {endpoint_id} does not belong to branch {branch.id}")
        else:
            eps = self.branch_endpoints(branch.id)
            if not eps:
                raise not_found("read_write endpoint of branch", branch.id)
            ep = eps[0]
        if database_name != state.database_name:
            raise not_found("database", database_name)
        if role_name != state.role_name:
            raise not_found("role", role_name)
        return self.build_uri(ep, pooled=pooled)

    def build_uri(self, ep: EndpointRecord, *, pooled: bool) -> str:
        state = self.state
        port = ep.pooled_port if pooled else ep.direct_port
        query = "?sslmode=require" if ep.tls else ""
        return (
            f"postgresql://{quote(state.role_name, safe='')}:{quote(state.role_password, safe='')}"
            f"@{self._address_host(ep)}:{port}/{quote(state.database_name, safe='')}{query}"
        )

    # ------------------------------------------------------------------ operations

    def _new_op(self, action: str, branch_id: str, endpoint_id: str | None = None) -> OperationRecord:
        stamp = iso(now())
        op = OperationRecord(
            id=ids.operation_id(),
            action=action,
            branch_id=branch_id,
            endpoint_id=endpoint_id,
            created_at=stamp,
            updated_at=stamp,
            started=time.time(),
        )
        self.state.operations[op.id] = op
        return op

    def _begin_op(self, op: OperationRecord) -> None:
        op.status = "running"
        op.updated_at = iso(now())
        self.save()

    def _end_op(self, op: OperationRecord, status: str, error: str | None = None) -> None:
        moment = now()
        op.status = status
        op.error = error
        op.updated_at = iso(moment)
        if status == "failed":
            op.failures_count += 1
        started = op.started or parse_time(op.created_at).timestamp()
        op.total_duration_ms = max(0, int((moment.timestamp() - started) * 1000))
        for waiter in self._op_settled.pop(op.id, ()):
            _wake(waiter)  # waiters run after this step, so they see the work that follows

    def _set_branch_state(self, branch: BranchRecord, current: str, pending: str | None = None) -> None:
        stamp = iso(now())
        branch.current_state = current
        branch.pending_state = pending
        branch.state_changed_at = stamp
        branch.updated_at = stamp

    def _spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the server alive; the operation is already marked
                log.exception("background operation %s crashed", name)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _op_preamble(self, fail: bool) -> None:
        """Delay and injected failure, before an operation does any work."""
        delay = self.faults.config.op_delay
        if delay:
            await asyncio.sleep(delay)
        if fail:
            raise _InjectedFailure("operation failed (injected fault)")

    # ------------------------------------------------------------------ validation

    def _expires_at(self, raw: Any, *, protected: bool, default: bool) -> str | None:
        if raw is None:
            return None
        if default:
            raise bad_request("the default branch cannot have an expiration time")
        if protected:
            raise bad_request("a protected branch cannot have an expiration time")
        if not isinstance(raw, str):
            raise bad_request("expires_at must be an RFC 3339 timestamp")
        try:
            moment = parse_time(raw)
        except ValueError:
            raise bad_request(
                "expires_at must be an RFC 3339 timestamp with a time zone, e.g. 2030-01-01T00:00:00Z"
            ) from None
        current = now()
        if moment <= current:
            raise bad_request("expires_at must be in the future")
        if moment > current + MAX_EXPIRY:
            raise bad_request("expires_at must be at most 30 days in the future")
        return iso(moment)

    def _check_name(self, name: Any, *, exclude: str | None = None) -> str:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise bad_request(f"branch name must be a non-empty string of at most {MAX_NAME}")
        for other in self.live_branches():
            if other.name == name and other.id != exclude:
                raise ApiError(409, "CONFLICT", f"branch with name {name!r} already exists")
        return name

    @staticmethod
    def _check_annotation(raw: Any) -> dict[str, str] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise bad_request("annotation_value must be an object of string values")
        return dict(raw)

    # ------------------------------------------------------------------ create

    async def create_branch(
        self, body: Mapping[str, Any]
    ) -> tuple[BranchRecord, list[EndpointRecord], list[OperationRecord]]:
        state = self.state
        spec = body.get("branch") or {}
        if not isinstance(spec, dict):
            raise bad_request("branch must be an object")
        wanted = body.get("endpoints") or []
        if not isinstance(wanted, list) or not all(isinstance(e, dict) for e in wanted):
            raise bad_request("endpoints must be a list of objects")
        if len(wanted) > 1:
            raise bad_request("the local server gives a branch at most one endpoint")
        for item in wanted:
            if item.get("type", "read_write") != "read_write":
                raise bad_request("the local server supports only read_write endpoints")
        for unsupported in ("parent_lsn", "parent_timestamp"):
            if spec.get(unsupported):
                raise bad_request(
                    f"{unsupported} is not supported by the local server: "
                    "a child always starts from its parent's current data"
                )
        annotation = self._check_annotation(body.get("annotation_value"))
        init_source = spec.get("init_source") or "parent-data"
        if init_source not in ("parent-data", "schema-only"):
            raise bad_request("init_source must be parent-data or schema-only")
        protected = spec.get("protected", False)
        if not isinstance(protected, bool):
            raise bad_request("protected must be a boolean")

        parent = self.branch(spec.get("parent_id") or state.default_branch_id)
        if parent.current_state != "ready":
            raise ApiError(423, "LOCKED", f"parent branch {parent.id} is not ready yet; please retry later")
        self._check_unlocked(parent, copies_block=False)
        new_id = ids.branch_id()
        name = self._check_name(spec.get("name") or new_id)
        expires_at = self._expires_at(spec.get("expires_at"), protected=protected, default=False)

        stamp = iso(now())
        branch = BranchRecord(
            id=new_id,
            name=name,
            physical=ids.physical_name(new_id),
            parent_id=parent.id,
            created_at=stamp,
            updated_at=stamp,
            state_changed_at=stamp,
            parent_timestamp=stamp,
            expires_at=expires_at,
            protected=protected,
            init_source=init_source,
            annotation=annotation,
            annotation_created_at=stamp if annotation is not None else None,
            annotation_updated_at=stamp if annotation is not None else None,
        )
        state.branches[branch.id] = branch
        ops = [self._new_op("create_branch", branch.id)]
        endpoints: list[EndpointRecord] = []
        if wanted:
            ep = EndpointRecord(id=ids.endpoint_id(), branch_id=branch.id, created_at=stamp, updated_at=stamp)
            state.endpoints[ep.id] = ep
            endpoints.append(ep)
            ops.append(self._new_op("start_compute", branch.id, ep.id))
        self._copying[parent.id] += 1  # the copy task gives it back
        fail = self.faults.operation_fails()
        # The copy starts first: PostgreSQL works on it while the listeners open and this
        # answer is built. It completes only once `opened` says how opening went.
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[bool] = loop.create_future()
        issued: asyncio.Future[None] = loop.create_future()
        self._spawn(
            lambda: self._run_create(branch, parent, endpoints, ops, fail, opened, issued),
            f"create {branch.id}",
        )
        # Until the CREATE DATABASE itself is sent (bounded: an injected delay or a busy
        # template must not hold the answer): the copy's idle check then has the loop to
        # itself, and the listeners and the answer are made while PostgreSQL copies.
        await asyncio.wait({issued}, timeout=COPY_ISSUE_WAIT)
        try:
            # Listeners open now so the answer carries their ports; connections made
            # before the copy ends find no database, as on a compute still starting.
            for ep in endpoints:
                await self._open(ep)
        except BaseException:
            opened.set_result(False)
            self._forget_branch(branch.id)
            for op in ops:
                state.operations.pop(op.id, None)
            raise
        opened.set_result(True)
        self.save()
        return branch, endpoints, ops

    async def _run_create(
        self,
        branch: BranchRecord,
        parent: BranchRecord,
        endpoints: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
        opened: asyncio.Future[bool],
        issued: asyncio.Future[None],
    ) -> None:
        op_branch, op_computes = ops[0], ops[1:]
        try:
            self._begin_op(op_branch)
            await self._op_preamble(fail)
            await self.dataplane.create_database(
                branch.physical,
                owner=self.state.role_name,
                template=parent.physical,
                schema_only=branch.init_source == "schema-only",
                issued=lambda: _wake(issued),
            )
        except Exception as exc:
            _wake(issued)  # the create's answer waits for this, and this for its answer
            if await opened:
                await self._abandon_create(branch, endpoints, ops, exc)
            else:
                await self._drop_if_made(branch.physical)
            return
        finally:
            self._copying[parent.id] -= 1
        if not await opened:
            # The create was refused after all (no listener): nobody ever saw this copy.
            await self._drop_if_made(branch.physical)
            return
        self._end_op(op_branch, "finished")
        self._set_branch_state(branch, "ready")
        self.save()
        for op, ep in zip(op_computes, endpoints, strict=True):
            self._begin_op(op)
            try:
                await self._op_preamble(False)
            finally:
                ep.current_state, ep.pending_state = "active", None
                ep.updated_at = iso(now())
                self._end_op(op, "finished")
                self.save()

    async def _abandon_create(
        self,
        branch: BranchRecord,
        endpoints: list[EndpointRecord],
        ops: list[OperationRecord],
        exc: Exception,
    ) -> None:
        reason = str(exc) if isinstance(exc, _InjectedFailure) else (f"copy failed: {exc.__class__.__name__}")
        log.warning("create of branch %s failed: %s", branch.id, scrub(str(exc)))
        for ep in endpoints:
            with contextlib.suppress(Exception):
                await self.dataplane.close_endpoint(ep.id)
        if not isinstance(exc, _InjectedFailure):
            await self._drop_if_made(branch.physical)
        self._forget_branch(branch.id)
        for op in ops:
            self._end_op(op, "failed", reason)
        self.save()

    async def _drop_if_made(self, physical: str) -> None:
        with contextlib.suppress(Exception):
            if physical in await self.dataplane.list_databases():
                await self.dataplane.drop_database(physical)

    # ------------------------------------------------------------------ update

    def update_branch(self, branch_id: str, body: Mapping[str, Any]) -> BranchRecord:
        branch = self.branch(branch_id)
        spec = body.get("branch") or {}
        if not isinstance(spec, dict):
            raise bad_request("branch must be an object")
        self._check_unlocked(branch, copies_block=False)
        name = self._check_name(spec["name"], exclude=branch.id) if "name" in spec else None
        protected = branch.protected
        if "protected" in spec:
            if not isinstance(spec["protected"], bool):
                raise bad_request("protected must be a boolean")
            protected = spec["protected"]
        expires_at = branch.expires_at
        if "expires_at" in spec:
            expires_at = self._expires_at(spec["expires_at"], protected=protected, default=branch.default)
        elif protected and expires_at:
            raise bad_request("a protected branch cannot have an expiration time")
        annotation = self._check_annotation(body.get("annotation_value"))
        stamp = iso(now())
        if name is not None:
            branch.name = name
        branch.protected = protected
        branch.expires_at = expires_at
        if annotation is not None:
            branch.annotation = annotation
            branch.annotation_created_at = branch.annotation_created_at or stamp
            branch.annotation_updated_at = stamp
        branch.updated_at = stamp
        self.save()
        return branch

    # ------------------------------------------------------------------ delete

    def delete_branch(self, branch_id: str) -> tuple[BranchRecord, list[OperationRecord]]:
        branch = self.branch(branch_id)
        if branch.default:
            raise bad_request(f"branch {branch.id} is the default branch and cannot be deleted")
        if branch.protected:
            raise bad_request(f"branch {branch.id} is protected and cannot be deleted")
        kids = self.children(branch.id)
        if kids:
            raise ApiError(
                422,
                "BRANCH_HAS_CHILDREN",
                f"branch {branch.id} has {len(kids)} child branch(es), e.g. {kids[0].id}; delete them first",
            )
        self._check_unlocked(branch, copies_block=True)
        return branch, self._start_delete(branch)

    def _start_delete(self, branch: BranchRecord) -> list[OperationRecord]:
        branch.deleting = True
        branch.pending_state = "deleted"
        eps = self.branch_endpoints(branch.id)
        ops = [self._new_op("suspend_compute", branch.id, ep.id) for ep in eps]
        ops.append(self._new_op("delete_timeline", branch.id))
        self.save()
        fail = self.faults.operation_fails()
        self._spawn(lambda: self._run_delete(branch, eps, ops, fail), f"delete {branch.id}")
        return ops

    async def _run_delete(
        self,
        branch: BranchRecord,
        eps: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
    ) -> None:
        closed: list[EndpointRecord] = []
        try:
            for op in ops:
                self._begin_op(op)
            await self._op_preamble(fail)
            for ep, op in zip(eps, ops, strict=False):
                closed.append(ep)
                await self.dataplane.close_endpoint(ep.id)
                self._end_op(op, "finished")
            await self.dataplane.drop_database(branch.physical)
        except Exception as exc:
            reason = (
                str(exc)
                if isinstance(exc, _InjectedFailure)
                else (f"delete failed: {exc.__class__.__name__}")
            )
            log.warning("delete of branch %s failed: %s", branch.id, scrub(str(exc)))
            branch.deleting = False
            branch.pending_state = None
            for ep in closed:
                with contextlib.suppress(Exception):
                    await self._open(ep, reuse_ports=True)
            for op in ops:
                if op.unfinished:
                    self._end_op(op, "failed", reason)
            self.save()
            return
        self._forget_branch(branch.id)
        self._end_op(ops[-1], "finished")
        self.save()

    # ------------------------------------------------------------------ restore

    def restore_branch(
        self, branch_id: str, body: Mapping[str, Any]
    ) -> tuple[BranchRecord, list[OperationRecord]]:
        branch = self.branch(branch_id)
        source = body.get("source_branch_id")
        for unsupported in ("source_lsn", "source_timestamp", "preserve_under_name"):
            if body.get(unsupported):
                raise bad_request(f"{unsupported} is not supported by the local server")
        if not isinstance(source, str) or not source:
            raise bad_request("source_branch_id is required")
        if branch.default or branch.parent_id is None:
            raise bad_request(f"branch {branch.id} has no parent to restore from")
        if source != branch.parent_id:
            raise bad_request(f"the local server restores a branch only from its parent ({branch.parent_id})")
        parent = self.branch(source)
        self._check_unlocked(branch, copies_block=True)
        self._check_unlocked(parent, copies_block=False)
        if parent.current_state != "ready":
            raise ApiError(423, "LOCKED", f"branch {parent.id} is not ready; please retry later")
        self._set_branch_state(branch, "init", "ready")
        eps = self.branch_endpoints(branch.id)
        ops = [self._new_op("create_timeline", branch.id)]
        ops += [self._new_op("start_compute", branch.id, ep.id) for ep in eps]
        self._copying[parent.id] += 1
        self.save()
        fail = self.faults.operation_fails()
        self._spawn(lambda: self._run_restore(branch, parent, eps, ops, fail), f"restore {branch.id}")
        return branch, ops

    async def _run_restore(
        self,
        branch: BranchRecord,
        parent: BranchRecord,
        eps: list[EndpointRecord],
        ops: list[OperationRecord],
        fail: bool,
    ) -> None:
        try:
            self._begin_op(ops[0])
            await self._op_preamble(fail)
            await self.dataplane.replace_database(
                branch.physical, template=parent.physical, owner=self.state.role_name
            )
        except Exception as exc:
            reason = (
                str(exc)
                if isinstance(exc, _InjectedFailure)
                else (f"restore failed: {exc.__class__.__name__}")
            )
            log.warning("restore of branch %s failed: %s", branch.id, scrub(str(exc)))
            for op in ops:
                self._end_op(op, "failed", reason)
            self._set_branch_state(branch, "ready")
            self.save()
            return
        finally:
            self._copying[parent.id] -= 1
        self._end_op(ops[0], "finished")
        branch.last_reset_at = iso(now())
        self._set_branch_state(branch, "ready")
        for op in ops[1:]:
            self._end_op(op, "finished")
        self.save()

    # ------------------------------------------------------------------ reaper

    def expired(self) -> Iterable[BranchRecord]:
        current = now()
        for branch in self.live_branches():
            if (
                branch.expires_at
                and not branch.default
                and not branch.protected
                and parse_time(branch.expires_at) <= current
                and self._blocking_op(branch.id) is None
                and not self._copying[branch.id]
                and not self.children(branch.id)
            ):
                yield branch

    def reap_once(self) -> list[str]:
        reaped = []
        for branch in list(self.expired()):
            log.info(
                "branch %s (%s) expired at %s; deleting it",
                branch.id,
                branch.name,
                branch.expires_at,
            )
            self._start_delete(branch)
            reaped.append(branch.id)
        return reaped

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                self.reap_once()
            except Exception:
                log.exception("reaper failed; trying again")
