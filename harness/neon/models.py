"""Values parsed from Neon API v2 answers.

Every model is a frozen dataclass whose `from_api(dict)` reads it field by field with
the one decoder (decode.py), which tolerates fields it does not know and optional fields
that are missing, because Neon adds fields over time and the local server answers only
the subset we use. A field's metadata says what its type does not (`api`).
Passwords and connection URIs are held as `Secret`, so reprs show `***`; every one is
registered for scrubbing as soon as it is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Self
from urllib.parse import unquote, urlsplit, urlunsplit

from cathouse_harness.neon.decode import NOT_IN_ANSWERS, api, decode
from cathouse_harness.support.redact import Secret, register_secret

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


def _object(data: Any) -> Mapping[str, Any]:
    return data if isinstance(data, Mapping) else _EMPTY


def _frozen(data: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(data)) if isinstance(data, Mapping) else _EMPTY


def _raw() -> Any:
    """The field holding the answer's object itself, read-only, for what no field names."""
    return field(default_factory=_empty, repr=False, compare=False, metadata=api(whole=True, read=_frozen))


def _version_number(value: Any) -> int | None:
    # a whole number, or one written in digits; anything else (17.1, "17beta") is no version
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _whole_number(value: Any) -> int | None:
    return value if isinstance(value, int) else None


class ApiModel:
    """A model `from_api` reads with the decoder."""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        return decode(cls, data)


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
class Project(ApiModel):
    id: str
    name: str
    region_id: str | None = None
    pg_version: int | None = field(default=None, metadata=api(read=_version_number))
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = _raw()


@dataclass(frozen=True)
class Branch(ApiModel):
    id: str
    name: str
    project_id: str
    parent_id: str | None = None
    parent_lsn: str | None = None
    parent_timestamp: datetime | None = None
    current_state: str | None = None
    pending_state: str | None = None
    default: bool = field(default=False, metadata=api(key=("default", "primary")))  # "primary": older name
    protected: bool = False
    expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # answers carry it beside the branch, not in it: `from_api`'s second argument
    annotation: Mapping[str, str] = field(default_factory=_empty, hash=False, metadata=NOT_IN_ANSWERS)
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_api(cls, data: Mapping[str, Any], annotation: Any = None) -> Self:
        """`annotation` is the branch's Neon annotation, which answers carry beside it."""
        return decode(cls, data, annotation=annotation_values(annotation))

    @property
    def ready(self) -> bool:
        return self.current_state == "ready" and not self.pending_state

    def with_annotation(self, annotation: Mapping[str, str]) -> Branch:
        return replace(self, annotation=MappingProxyType(dict(annotation)))


@dataclass(frozen=True)
class Endpoint(ApiModel):
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
    raw: Mapping[str, Any] = _raw()

    @property
    def usable(self) -> bool:
        return self.current_state in ENDPOINT_USABLE and not self.disabled


@dataclass(frozen=True)
class Operation(ApiModel):
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
    raw: Mapping[str, Any] = _raw()

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
class Role(ApiModel):
    name: str
    branch_id: str
    protected: bool = False
    password: Secret | None = field(default=None, repr=False, compare=False)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Database(ApiModel):
    name: str
    owner_name: str
    branch_id: str
    id: int | None = field(default=None, metadata=api(read=_whole_number))
    created_at: datetime | None = None
    updated_at: datetime | None = None


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


_URI_PARTS = ("database", "role", "host", "password")


def _uri_parts(uri: str) -> dict[str, str | None]:
    """The `_URI_PARTS` of a connection URI, as connection_parameters would list them."""
    try:
        parts = urlsplit(uri)
        return {
            "database": unquote(parts.path.lstrip("/")),
            "role": unquote(parts.username or ""),
            "host": parts.hostname or "",
            "password": unquote(parts.password) if parts.password else None,
        }
    except ValueError:
        return {}


@dataclass(frozen=True)
class ConnectionInfo(ApiModel):
    """One way into the branch: a direct URI plus the parts Neon lists beside it."""

    uri: Secret = field(metadata=NOT_IN_ANSWERS)  # `from_api` registers it whole and its password
    database: str
    role: str
    host: str
    pooler_host: str | None = None
    password: Secret | None = field(default=None, repr=False, compare=False)
    # Neon serves both hosts on 5432 and names no port; ours is set where the pooled
    # URL is known to carry one (`create`'s entry made from two URIs)
    pooler_port: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Read from `connection_parameters`; the URI carries the same facts and fills in
        whatever the parameters leave out."""
        given_uri = data.get("connection_uri")
        uri = secret_uri("" if given_uri is None else str(given_uri))
        info = decode(cls, _object(data.get("connection_parameters")), uri=uri)
        from_uri = decode(cls, _uri_parts(uri.reveal()), uri=uri)
        return replace(info, **{k: getattr(from_uri, k) for k in _URI_PARTS if not getattr(info, k)})

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
class BranchCreated(ApiModel):
    """Everything a create answers. `recovered` is True when the client found the branch
    by name after an attempt whose answer was lost, instead of reading the answer."""

    # the create answer carries the branch's annotation beside it
    branch: Branch = field(metadata=api(whole=True, read=lambda answer: Branch.from_api(
        _object(answer.get("branch")), answer.get("annotation")
    )))
    endpoints: tuple[Endpoint, ...] = ()
    operations: tuple[Operation, ...] = ()
    roles: tuple[Role, ...] = ()
    databases: tuple[Database, ...] = ()
    connection_uris: tuple[ConnectionInfo, ...] = ()
    recovered: bool = field(default=False, metadata=NOT_IN_ANSWERS)

