"""The local Neon server's state: one project, its branches, endpoints and operations.

Everything lives in one JSON document under the home directory, written atomically
(temporary file + rename, mode 0600) after every change, so a restarted server finds
the branches it had. The records are plain mutable dataclasses owned by the control
plane (`cathouse_harness.local.control.control`); the JSON shapes Neon clients see are built in
`cathouse_harness.local.api.app`, not here.

The API key lives in its own file (`<home>/local-api-key`, 0600), generated once per
home, so that it is never part of a state dump.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.control import ids
from cathouse_harness.local.discovery import API_KEY_FILE
from cathouse_harness.support.safe_paths import write_private as write_private  # control and server use it
from cathouse_harness.support.timestamps import format_time, parse_strict

STATE_FILE = "local-state.json"  # memory storage; disk storage uses local-state-disk.json
STATE_VERSION = 2
# Finished operations kept for `GET /operations`; older ones are forgotten.
MAX_OPERATIONS = 2000
# Finished operations written to the state file (the newest); the rest live in memory only.
PERSISTED_OPERATIONS = 200

UNFINISHED = ("scheduling", "running", "cancelling")


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, to the second, as Neon writes timestamps."""
    return format_time(moment, whole_seconds=True)


# Request bodies and the state file are read strictly (see cathouse_harness.support.timestamps).
parse_time = parse_strict


@dataclass
class DatabaseRecord:
    """A database of one branch. `physical` is the PostgreSQL database holding it, or
    None while it is as created (empty) and nobody has connected: such a database costs
    nothing to create or fork and is made on its first connection."""

    id: int
    name: str
    owner_name: str
    created_at: str
    updated_at: str
    physical: str | None = None


@dataclass
class RoleRecord:
    """A role of one branch, with this branch's own password, which its instance's
    `pg_authid` holds (the data plane sets it there): it opens this branch only."""

    name: str
    created_at: str
    updated_at: str
    protected: bool = False
    password: str = field(default="", repr=False)


@dataclass
class BranchRecord:
    id: str
    name: str
    # The stem of this branch's physical database names (`ids.physical_name(id)`); the
    # databases themselves are in `databases`.
    physical: str
    parent_id: str | None
    created_at: str
    updated_at: str
    current_state: str = "init"
    pending_state: str | None = "ready"
    state_changed_at: str = ""
    parent_lsn: str | None = None
    parent_timestamp: str | None = None
    expires_at: str | None = None
    # What expires_at was set as, from the moment it was set: a reset starts it again.
    ttl_interval_seconds: int | None = None
    protected: bool = False
    default: bool = False
    init_source: str = "parent-data"
    # Set when a delete was accepted: hidden from clients until the database is dropped.
    deleting: bool = False
    last_reset_at: str | None = None
    annotation: dict[str, str] | None = None
    annotation_created_at: str | None = None
    annotation_updated_at: str | None = None
    databases: dict[str, DatabaseRecord] = field(default_factory=dict)
    roles: dict[str, RoleRecord] = field(default_factory=dict)
    # A branch a snapshot was restored into (`cathouse_harness.local.snapshots`): the
    # snapshot, the branch it is to replace, and `restored` until a finalize, then `finalized`.
    restored_from: str | None = None
    restored_as: str | None = None
    restore_status: str | None = None


@dataclass
class SnapshotRecord:
    """A snapshot of a branch (`cathouse_harness.local.snapshots`): its catalog then, and the
    stopped instance `instance` holding its data. Its databases' `physical` names are
    placed in that instance, so a restore copies them as a create copies a parent's."""

    id: str
    name: str
    source_branch_id: str
    created_at: str
    instance: str
    timestamp: str | None = None
    lsn: str | None = None
    expires_at: str | None = None
    # being made (its operation runs), or made and ready to restore
    ready: bool = False
    databases: dict[str, DatabaseRecord] = field(default_factory=dict)
    roles: dict[str, RoleRecord] = field(default_factory=dict)


@dataclass
class EndpointRecord:
    id: str
    branch_id: str
    created_at: str
    updated_at: str
    current_state: str = "init"
    pending_state: str | None = "active"
    type: str = "read_write"
    disabled: bool = False
    suspend_timeout_seconds: int = 0
    autoscaling_limit_min_cu: float = 0.25
    autoscaling_limit_max_cu: float = 0.25
    started_at: str | None = None
    suspended_at: str | None = None
    direct_port: int = 0
    pooled_port: int = 0
    pooled_via_pgbouncer: bool = False
    tls: bool = False


@dataclass
class OperationRecord:
    id: str
    action: str
    branch_id: str | None
    endpoint_id: str | None
    created_at: str
    updated_at: str
    status: str = "scheduling"
    failures_count: int = 0
    error: str | None = None
    total_duration_ms: int = 0
    # Epoch seconds at creation: timestamps are whole seconds, durations need better.
    started: float = 0.0

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED


@dataclass
class LocalState:
    project_id: str
    project_name: str
    created_at: str
    # The role and database the project was created with (the harness's configured
    # ones, or Neon's `neondb` / `neondb_owner`), which every branch starts with.
    role_name: str
    database_name: str
    storage: str
    branches: dict[str, BranchRecord] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    # Insertion order is creation order; `prune_operations` keeps the newest.
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    version: int = STATE_VERSION
    # when PATCH /projects/{id} last changed the project (None: never, so created_at)
    project_updated_at: str | None = None
    snapshots: dict[str, SnapshotRecord] = field(default_factory=dict)
    # `settings.preload_libraries` as the project was last given it (None: never given)
    preload_libraries: dict[str, Any] | None = None

    def __repr__(self) -> str:  # the dataclass repr would show the role passwords
        return (
            f"LocalState(project_id={self.project_id!r}, branches={len(self.branches)}, "
            f"endpoints={len(self.endpoints)}, operations={len(self.operations)})"
        )

    @property
    def default_branch(self) -> BranchRecord:
        return next(b for b in self.branches.values() if b.default)

    def prune_operations(self) -> None:
        excess = len(self.operations) - MAX_OPERATIONS
        if excess <= 0:
            return
        for op_id in [k for k, op in self.operations.items() if not op.unfinished][:excess]:
            del self.operations[op_id]


def database_id(branch_id: str, name: str) -> int:
    """A stable positive int64 for a branch's database (Neon's database ids are ints)."""
    return zlib.crc32(f"{branch_id}/{name}".encode()) & 0x7FFFFFFF


NEON_DATABASE = "neondb"
NEON_ROLE = "neondb_owner"


def new_state(
    *, storage: str, role_name: str = NEON_ROLE, database_name: str = NEON_DATABASE
) -> LocalState:
    """A fresh project with its default branch `main` holding exactly one role and one
    database it owns, as Neon's create-project makes them: the ones asked for, else
    `neondb` owned by `neondb_owner`. The caller makes the PostgreSQL database."""
    stamp = iso(now())
    main_id = ids.branch_id()
    physical = ids.physical_name(main_id)
    state = LocalState(
        project_id=ids.project_id(),
        project_name="cathouse-local",
        created_at=stamp,
        role_name=role_name,
        database_name=database_name,
        storage=storage,
    )
    main = BranchRecord(
        id=main_id,
        name="main",
        physical=physical,
        parent_id=None,
        created_at=stamp,
        updated_at=stamp,
        state_changed_at=stamp,
        default=True,
    )
    main.roles[role_name] = RoleRecord(role_name, stamp, stamp, password=ids.role_password())
    main.databases[database_name] = DatabaseRecord(
        database_id(main_id, database_name), database_name, role_name, stamp, stamp, physical
    )
    state.branches[main_id] = main
    return state


def _record(cls: type, item: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{n: v for n, v in item.items() if n in names})


def _records(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _record(cls, item) for k, item in raw.items()}


def _branch(item: dict[str, Any], cls: type = BranchRecord) -> Any:
    """A branch (or a snapshot: the same catalog of databases and roles) from its JSON."""
    branch = _record(cls, item)
    branch.databases = _records(DatabaseRecord, item.get("databases") or {})
    branch.roles = _records(RoleRecord, item.get("roles") or {})
    return branch


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had one role and one database for the whole project, and a
    `default_branch_id`; every branch gets them as its catalog."""
    role, database = raw["role_name"], raw["database_name"]
    raw["passwords"] = {role: raw.pop("role_password")}  # taken by `_adopt_shared_passwords`
    default_id = raw.pop("default_branch_id", None)
    for branch_id, branch in raw.get("branches", {}).items():
        branch["default"] = branch.get("default") or branch_id == default_id
        stamp = branch["created_at"]
        branch["roles"] = {role: {"name": role, "created_at": stamp, "updated_at": stamp}}
        branch["databases"] = {
            database: {
                "id": database_id(branch_id, database),
                "name": database,
                "owner_name": role,
                "created_at": stamp,
                "updated_at": stamp,
                "physical": branch["physical"],
            }
        }
    raw["version"] = STATE_VERSION
    return raw


def _adopt_shared_passwords(raw: dict[str, Any]) -> None:
    """A state written before branches had passwords of their own kept one password per
    role (`passwords`, the shared plane's): its roles keep it, so the URLs handed out
    stay valid; the key itself is dropped."""
    shared = raw.pop("passwords", None) or {}
    for branch in raw.get("branches", {}).values():
        for name, role in (branch.get("roles") or {}).items():
            if not role.get("password") and shared.get(name):
                role["password"] = shared[name]


def state_path(home: Path, storage: str) -> Path:
    """Each storage kind has its own cluster, so its own project and state file."""
    return home / (STATE_FILE if storage == "memory" else f"local-state-{storage}.json")


def load_state(home: Path, storage: str = "memory") -> LocalState | None:
    """The persisted state, or None when this home has none yet."""
    path = state_path(home, storage)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalServerError(
            f"cannot read the local server state {path}: {exc.__class__.__name__}",
            hint="move the file away to start with a fresh project",
        ) from exc
    if raw.get("version") == 1:
        raw = _upgrade_v1(raw)
    if raw.get("version") != STATE_VERSION:
        raise LocalServerError(
            f"local server state {path} has version {raw.get('version')!r}, expected {STATE_VERSION}",
            hint="move the file away to start with a fresh project",
        )
    _adopt_shared_passwords(raw)
    scalars = {f.name: raw[f.name] for f in fields(LocalState) if f.name in raw}
    scalars["branches"] = {k: _branch(v) for k, v in raw.get("branches", {}).items()}
    scalars["endpoints"] = _records(EndpointRecord, raw.get("endpoints", {}))
    scalars["operations"] = _records(OperationRecord, raw.get("operations", {}))
    scalars["snapshots"] = {k: _branch(v, SnapshotRecord) for k, v in raw.get("snapshots", {}).items()}
    return LocalState(**scalars)


def state_snapshot(state: LocalState, home: Path) -> tuple[Path, str]:
    """Where the state goes and its text now; the caller writes it (`write_private`,
    atomic, mode 0600), possibly from another thread.

    The control plane snapshots after every step of every operation, on its event loop,
    so this must stay cheap however long the server has lived: records are flat, so
    shallow dicts replace `asdict`'s deep copies, the C JSON encoder is used (no indent),
    and only the newest finished operations are written (a restart cancels unfinished
    ones and clients only ever ask for recent ones). With 2000 operations this took
    127 ms. A finished operation no longer changes, so its JSON is encoded once and reused
    (the operations were most of every write: ~2.5 ms of each fork's path at 200 of them).
    """
    state.prune_operations()
    return state_path(home, state.storage), _state_text(state)


# Each operation's last JSON text and the values it was made from, by operation id.
_op_texts: dict[str, tuple[tuple[Any, ...], str]] = {}


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _op_text(op: OperationRecord, cache: dict[str, tuple[tuple[Any, ...], str]]) -> str:
    """`"<id>":{…}`, the operation's entry in the operations object."""
    if op.unfinished:  # still changing: not worth caching
        return f"{_dump(op.id)}:{_dump(dict(vars(op)))}"
    # What ending an operation sets; a finished one is never touched again, this only
    # guards against a record being reused.
    key = (op.status, op.updated_at, op.failures_count, op.total_duration_ms, op.error)
    hit = _op_texts.get(op.id)
    fresh = hit is None or hit[0] != key
    text = f"{_dump(op.id)}:{_dump(dict(vars(op)))}" if fresh else hit[1]  # type: ignore[index]
    cache[op.id] = (key, text)
    return text


def _branch_data(branch: BranchRecord | SnapshotRecord) -> dict[str, Any]:
    data = dict(vars(branch))
    data["databases"] = {k: dict(vars(v)) for k, v in branch.databases.items()}
    data["roles"] = {k: dict(vars(v)) for k, v in branch.roles.items()}
    return data


def _state_text(state: LocalState) -> str:
    """The same text as `json.dumps(<state as dicts>, sort_keys=True)` (compact)."""
    global _op_texts
    data: dict[str, str] = {
        f.name: _dump(getattr(state, f.name))
        for f in fields(LocalState)
        if f.name not in ("branches", "endpoints", "operations", "snapshots")
    }
    data["branches"] = _dump({k: _branch_data(v) for k, v in state.branches.items()})
    data["snapshots"] = _dump({k: _branch_data(v) for k, v in state.snapshots.items()})
    data["endpoints"] = _dump({k: dict(vars(v)) for k, v in state.endpoints.items()})
    finished = [k for k, op in state.operations.items() if not op.unfinished]
    dropped = set(finished[: max(0, len(finished) - PERSISTED_OPERATIONS)])
    cache: dict[str, tuple[tuple[Any, ...], str]] = {}
    kept = sorted(k for k in state.operations if k not in dropped)
    data["operations"] = "{" + ",".join(_op_text(state.operations[k], cache) for k in kept) + "}"
    _op_texts = cache  # only the operations still written stay cached
    return "{" + ",".join(f"{_dump(k)}:{data[k]}" for k in sorted(data)) + "}"


def load_or_create_api_key(home: Path) -> str:
    """This home's Bearer key, generated on first use and kept in a 0600 file.

    Two processes racing to create it agree: the key is written to a temporary file
    and hard-linked into place, so the first link wins and the loser reads its key.
    """
    path = home / API_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{API_KEY_FILE}.", dir=home)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(ids.api_key() + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_text(encoding="utf-8").strip()
