"""Values parsed from Neon API v2 answers.

Every model is a frozen dataclass with a `from_api(dict)` constructor that tolerates
fields it does not know and optional fields that are missing, because Neon adds fields
over time and the local server answers only the subset we use. Passwords and connection
URIs are held as `Secret`, so reprs show `***`; every one is registered for scrubbing as
soon as it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from cathouse_harness.support.redact import Secret, register_secret
from cathouse_harness.support.timestamps import parse_time

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


# Neon operation statuses. Pending ones may still change; "skipped" means Neon decided
# the work was unnecessary, which for a waiter is as good as finished.
OPERATION_PENDING = frozenset({"scheduling", "running", "cancelling"})
OPERATION_DONE = frozenset({"finished", "skipped"})
OPERATION_FAILED = frozenset({"failed", "error", "cancelled"})

# An endpoint accepts connections in these states (idle ones wake on connect).
ENDPOINT_USABLE = frozenset({"active", "idle"})

def _str(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return default if value is None else str(value)


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None or value == "" else str(value)


def _bool(data: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = data.get(key)
    return default if value is None else bool(value)


def _int(data: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = data.get(key)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _frozen(data: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(data)) if isinstance(data, Mapping) else _EMPTY


def annotation_values(entry: Any) -> Mapping[str, str]:
    """The key/value pairs of one Neon annotation.

    Neon wraps them as `{"object": {...}, "value": {...}, ...}`; a plain `{key: value}`
    map is accepted too, because that is what a caller naturally sends.
    """
    if not isinstance(entry, Mapping):
        return _EMPTY
    inner = entry.get("value")
    if isinstance(inner, Mapping):
        entry = inner
    elif "object" in entry:
        return _EMPTY
    return MappingProxyType({str(k): str(v) for k, v in entry.items() if v is not None})


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    region_id: str | None = None
    pg_version: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=_empty, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Project:
        pg = data.get("pg_version")
        return cls(
            id=_str(data, "id"),
            name=_str(data, "name"),
            region_id=_opt_str(data, "region_id"),
            pg_version=int(pg) if isinstance(pg, int | str) and str(pg).isdigit() else None,
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            raw=_frozen(data),
        )


@dataclass(frozen=True)
class Branch:
    id: str
    name: str
    project_id: str
    parent_id: str | None = None
    parent_lsn: str | None = None
    parent_timestamp: datetime | None = None
    current_state: str | None = None
    pending_state: str | None = None
    default: bool = False
    protected: bool = False
    expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    annotation: Mapping[str, str] = field(default_factory=_empty, hash=False)
    raw: Mapping[str, Any] = field(default_factory=_empty, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], annotation: Any = None) -> Branch:
        """`annotation` is the branch's Neon annotation, which answers carry beside it."""
        return cls(
            id=_str(data, "id"),
            name=_str(data, "name"),
            project_id=_str(data, "project_id"),
            parent_id=_opt_str(data, "parent_id"),
            parent_lsn=_opt_str(data, "parent_lsn"),
            parent_timestamp=parse_time(data.get("parent_timestamp")),
            current_state=_opt_str(data, "current_state"),
            pending_state=_opt_str(data, "pending_state"),
            # "primary" is the older name of "default".
            default=_bool(data, "default", _bool(data, "primary")),
            protected=_bool(data, "protected"),
            expires_at=parse_time(data.get("expires_at")),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            annotation=annotation_values(annotation if annotation is not None else {}),
            raw=_frozen(data),
        )

    @property
    def ready(self) -> bool:
        return self.current_state == "ready" and not self.pending_state

    def with_annotation(self, annotation: Mapping[str, str]) -> Branch:
        return replace(self, annotation=MappingProxyType(dict(annotation)))


@dataclass(frozen=True)
class Endpoint:
    id: str
    branch_id: str
    project_id: str
    host: str
    type: str = "read_write"
    current_state: str | None = None
    pending_state: str | None = None
    pooler_enabled: bool = False
    pooler_mode: str | None = None
    disabled: bool = False
    region_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=_empty, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Endpoint:
        return cls(
            id=_str(data, "id"),
            branch_id=_str(data, "branch_id"),
            project_id=_str(data, "project_id"),
            host=_str(data, "host"),
            type=_str(data, "type", "read_write"),
            current_state=_opt_str(data, "current_state"),
            pending_state=_opt_str(data, "pending_state"),
            pooler_enabled=_bool(data, "pooler_enabled"),
            pooler_mode=_opt_str(data, "pooler_mode"),
            disabled=_bool(data, "disabled"),
            region_id=_opt_str(data, "region_id"),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            raw=_frozen(data),
        )

    @property
    def usable(self) -> bool:
        return self.current_state in ENDPOINT_USABLE and not self.disabled


@dataclass(frozen=True)
class Operation:
    id: str
    project_id: str
    action: str
    status: str
    branch_id: str | None = None
    endpoint_id: str | None = None
    failures_count: int = 0
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=_empty, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Operation:
        return cls(
            id=_str(data, "id"),
            project_id=_str(data, "project_id"),
            action=_str(data, "action"),
            status=_str(data, "status"),
            branch_id=_opt_str(data, "branch_id"),
            endpoint_id=_opt_str(data, "endpoint_id"),
            failures_count=_int(data, "failures_count"),
            error=_opt_str(data, "error"),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            raw=_frozen(data),
        )

    @property
    def done(self) -> bool:
        """Finished successfully (or skipped by Neon as unnecessary)."""
        return self.status in OPERATION_DONE

    @property
    def failed(self) -> bool:
        """Ended without doing its work: failed, error or cancelled."""
        return self.status in OPERATION_FAILED

    @property
    def pending(self) -> bool:
        """Still to settle; unknown statuses count as pending so a waiter keeps polling."""
        return not (self.done or self.failed)


@dataclass(frozen=True)
class Role:
    name: str
    branch_id: str
    protected: bool = False
    password: Secret | None = field(default=None, repr=False, compare=False)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Role:
        password = data.get("password")
        return cls(
            name=_str(data, "name"),
            branch_id=_str(data, "branch_id"),
            protected=_bool(data, "protected"),
            password=Secret(str(password)) if password else None,
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
        )


@dataclass(frozen=True)
class Database:
    name: str
    owner_name: str
    branch_id: str
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Database:
        raw_id = data.get("id")
        return cls(
            name=_str(data, "name"),
            owner_name=_str(data, "owner_name"),
            branch_id=_str(data, "branch_id"),
            id=raw_id if isinstance(raw_id, int) else None,
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
        )


def secret_uri(uri: str) -> Secret:
    """Wrap a connection URI as a Secret and register its password on its own too."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    if password:
        register_secret(password)
        register_secret(unquote(password))
    return Secret(uri)


def replace_host(uri: str, host: str, port: int | None) -> str:
    """`uri` with its host and port swapped (no port: the default, 5432), keeping user,
    password, database and query."""
    parts = urlsplit(uri)
    userinfo, _, _ = parts.netloc.rpartition("@")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port_part = f":{port}" if port is not None else ""
    netloc = f"{userinfo}@{host}{port_part}" if userinfo else f"{host}{port_part}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class ConnectionInfo:
    """One way into the branch: a direct URI plus the parts Neon lists beside it."""

    uri: Secret
    database: str
    role: str
    host: str
    pooler_host: str | None = None
    password: Secret | None = field(default=None, repr=False, compare=False)
    # Neon serves both hosts on 5432 and names no port; ours is set where the pooled
    # URL is known to carry one (`create`'s entry made from two URIs)
    pooler_port: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ConnectionInfo:
        uri = secret_uri(_str(data, "connection_uri"))
        params = data.get("connection_parameters")
        params = params if isinstance(params, Mapping) else {}
        # The URI carries the same facts; it fills in whatever the parameters leave out.
        try:
            parts = urlsplit(uri.reveal())
            from_uri = {
                "database": unquote(parts.path.lstrip("/")),
                "role": unquote(parts.username or ""),
                "host": parts.hostname or "",
                "password": unquote(parts.password) if parts.password else None,
            }
        except ValueError:
            from_uri = {}
        password = params.get("password") or from_uri.get("password")
        return cls(
            uri=uri,
            database=_str(params, "database") or str(from_uri.get("database") or ""),
            role=_str(params, "role") or str(from_uri.get("role") or ""),
            host=_str(params, "host") or str(from_uri.get("host") or ""),
            pooler_host=_opt_str(params, "pooler_host"),
            password=Secret(str(password)) if password else None,
            pooler_port=_opt_int(params, "pooler_port"),
        )

    @property
    def pooled_uri(self) -> Secret | None:
        """The same URI through the pooler host, on the pooler's port (5432, left out,
        unless one is known: the connection URI's own port is the direct listener's).
        None when no pooler host is named, or when it is the direct host with no port
        to tell them apart (then ask the API for the pooled URI)."""
        if not self.pooler_host:
            return None
        if self.pooler_port is None and self.pooler_host.lower() == self.host.lower():
            return None
        return Secret(replace_host(self.uri.reveal(), self.pooler_host, self.pooler_port))


@dataclass(frozen=True)
class BranchCreated:
    """Everything a create answers. `recovered` is True when the client found the branch
    by name after an attempt whose answer was lost, instead of reading the answer."""

    branch: Branch
    endpoints: tuple[Endpoint, ...] = ()
    operations: tuple[Operation, ...] = ()
    roles: tuple[Role, ...] = ()
    databases: tuple[Database, ...] = ()
    connection_uris: tuple[ConnectionInfo, ...] = ()
    recovered: bool = False

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> BranchCreated:
        def items(key: str) -> list[Mapping[str, Any]]:
            value = data.get(key)
            return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []

        branch_data = data.get("branch")
        return cls(
            branch=Branch.from_api(
                branch_data if isinstance(branch_data, Mapping) else {},
                data.get("annotation"),
            ),
            endpoints=tuple(Endpoint.from_api(e) for e in items("endpoints")),
            operations=tuple(Operation.from_api(o) for o in items("operations")),
            roles=tuple(Role.from_api(r) for r in items("roles")),
            databases=tuple(Database.from_api(d) for d in items("databases")),
            connection_uris=tuple(ConnectionInfo.from_api(c) for c in items("connection_uris")),
        )
