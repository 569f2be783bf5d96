"""Request validation of the local Neon API: bodies and query strings to typed requests.

Everything that can be judged from the request alone is judged here, in the HTTP layer,
with the limits Neon's API reference states (names, annotation size, endpoint types,
timestamps, `limit` ranges, sort orders, cursors); the control plane receives typed
requests and judges only what depends on the project's state (existence, locks, rules
between branches).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from cathouse_harness.errors import ApiError
from cathouse_harness.local.compute.roots import CLUSTER_ROLES
from cathouse_harness.local.control.history import LSN_PATTERN, PointInTime
from cathouse_harness.local.control.state import iso, now, parse_time

MAX_EXPIRY = timedelta(days=30)
MAX_BRANCH_NAME = 256
MAX_ANNOTATION_PROPERTIES = 50
MAX_PG_NAME_BYTES = 63
ENDPOINT_TYPES = ("read_write", "read_only")
INIT_SOURCES = ("parent-data", "schema-only")
SORT_ORDERS = ("asc", "desc")
BRANCH_SORT_KEYS = ("name", "created_at", "updated_at")
MIN_CU = 0.25
SUSPEND_TIMEOUT_RANGE = (-1, 604800)


class _Unset:
    """The type of UNSET: a field the request left out (where null means something)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


# ---------------------------------------------------------------------- small checks


def _object(body: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        if required:
            raise bad_request(f"{key} is required")
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{key} must be an object")
    return value


def _bool(spec: Mapping[str, Any], key: str) -> bool | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{key} must be a boolean")
    return value


def _string(spec: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = spec.get(key)
    if value is None or value == "":
        if required:
            raise bad_request(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string")
    return value


def branch_name(value: str | None) -> str | None:
    if value is not None and (not value.strip() or len(value) > MAX_BRANCH_NAME):
        raise bad_request(f"branch name must be a non-empty string of at most {MAX_BRANCH_NAME} characters")
    return value


def pg_name(value: str | None, what: str) -> str:
    """A role or database name: PostgreSQL's limit is 63 bytes, as Neon states."""
    if not value:
        raise bad_request(f"{what} name is required")
    if len(value.encode()) > MAX_PG_NAME_BYTES:
        raise bad_request(f"{what} name cannot exceed {MAX_PG_NAME_BYTES} bytes")
    if value.startswith("pg_") or "\0" in value:
        raise bad_request(f"{what} name {value!r} is reserved")
    return value


def annotation(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise bad_request("annotation_value must be an object of string values")
    if len(raw) > MAX_ANNOTATION_PROPERTIES:
        raise bad_request(f"annotation_value has {len(raw)} properties; at most {MAX_ANNOTATION_PROPERTIES}")
    return dict(raw)


def expires_at(raw: Any, *, most: timedelta | None = MAX_EXPIRY) -> str | None:
    """An `expires_at` value: RFC 3339 with a time zone, in the future, at most `most`
    ahead (a branch's 30 days; None: no bound, a snapshot's), stored to the second."""
    if raw is None:
        return None
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
    if most is not None and moment > current + most:
        raise bad_request("expires_at must be at most 30 days in the future")
    return iso(moment)


def _compute_units(spec: Mapping[str, Any], key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < MIN_CU:
        raise bad_request(f"{key} must be a number of at least {MIN_CU}")
    return float(value)


def _suspend_timeout(spec: Mapping[str, Any]) -> int | None:
    value = spec.get("suspend_timeout_seconds")
    if value is None:
        return None
    low, high = SUSPEND_TIMEOUT_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"suspend_timeout_seconds must be an integer from {low} to {high}")
    return value


# ---------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class EndpointSettings:
    """What an endpoint may be given at creation or in an update."""

    type: str | None = None
    suspend_timeout_seconds: int | None = None
    autoscaling_limit_min_cu: float | None = None
    autoscaling_limit_max_cu: float | None = None
    disabled: bool | None = None


def endpoint_settings(spec: Mapping[str, Any], *, type_required: bool) -> EndpointSettings:
    kind = spec.get("type")
    if kind is None and type_required:
        raise bad_request("endpoint type is required: read_write or read_only")
    if kind is not None and kind not in ENDPOINT_TYPES:
        raise bad_request("endpoint type must be read_write or read_only")
    low, high = (
        _compute_units(spec, "autoscaling_limit_min_cu"),
        _compute_units(spec, "autoscaling_limit_max_cu"),
    )
    if low is not None and high is not None and low > high:
        raise bad_request("autoscaling_limit_min_cu must not exceed autoscaling_limit_max_cu")
    return EndpointSettings(kind, _suspend_timeout(spec), low, high, _bool(spec, "disabled"))


@dataclass(frozen=True)
class BranchCreate:
    name: str | None
    parent_id: str | None
    expires_at: str | None
    protected: bool
    init_source: str
    annotation: dict[str, str] | None
    endpoints: tuple[EndpointSettings, ...]
    # parent_lsn / parent_timestamp: the parent's state at that point (None: now).
    at: PointInTime | None = None


def branch_create(body: Mapping[str, Any]) -> BranchCreate:
    spec = _object(body, "branch")
    wanted = body.get("endpoints") or []
    if not isinstance(wanted, list) or not all(isinstance(e, dict) for e in wanted):
        raise bad_request("endpoints must be a list of objects")
    endpoints = tuple(endpoint_settings(e, type_required=True) for e in wanted)
    if sum(e.type == "read_write" for e in endpoints) > 1:
        raise bad_request("a branch can have at most one read_write endpoint")
    init_source = _string(spec, "init_source") or "parent-data"
    if init_source not in INIT_SOURCES:
        raise bad_request("init_source must be parent-data or schema-only")
    at = point_in_time(spec, "parent_lsn", "parent_timestamp")
    if at is not None and init_source == "schema-only":
        raise bad_request(
            "a schema-only branch copies its source's current schema: leave out parent_lsn, parent_timestamp"
        )
    return BranchCreate(
        name=branch_name(_string(spec, "name")),
        parent_id=_string(spec, "parent_id"),
        expires_at=expires_at(spec.get("expires_at")),
        protected=bool(_bool(spec, "protected")),
        init_source=init_source,
        annotation=annotation(body.get("annotation_value")),
        endpoints=endpoints,
        at=at,
    )


def point_in_time(spec: Mapping[str, Any], lsn_key: str, time_key: str) -> PointInTime | None:
    """An LSN (`0/16B3748`) or an RFC 3339 timestamp with a time zone, not both."""
    lsn, timestamp = _string(spec, lsn_key), _string(spec, time_key)
    if lsn is not None and timestamp is not None:
        raise bad_request(f"give one of {lsn_key} and {time_key}, not both")
    if lsn is not None:
        if not LSN_PATTERN.match(lsn):
            raise bad_request(f"{lsn_key} must be an LSN such as 0/16B3748")
        return PointInTime(lsn=lsn.upper())
    if timestamp is not None:
        try:
            parse_time(timestamp)
        except ValueError:
            raise bad_request(
                f"{time_key} must be an RFC 3339 timestamp with a time zone, e.g. 2030-01-01T00:00:00Z"
            ) from None
        return PointInTime(timestamp=timestamp)
    return None


@dataclass(frozen=True)
class BranchUpdate:
    name: str | None
    protected: bool | None
    # UNSET: leave as is; None: remove the expiry.
    expires_at: str | None | _Unset


def branch_update(body: Mapping[str, Any]) -> BranchUpdate:
    spec = _object(body, "branch", required=True)
    if "name" in spec and not isinstance(spec["name"], str):
        raise bad_request("name must be a string")
    return BranchUpdate(
        name=branch_name(spec.get("name")),
        protected=_bool(spec, "protected"),
        expires_at=expires_at(spec["expires_at"]) if "expires_at" in spec else UNSET,
    )


PROJECT_NAME_MAX = 64


def project_update(body: Mapping[str, Any], history_seconds: int) -> str | None:
    """`PATCH /projects/{id}`: the new name (None: unchanged). Of the other fields Neon
    takes, this server keeps a fixed history window and has no project-wide settings
    to apply, so those are accepted only when they change nothing."""
    spec = _object(body, "project", required=True)
    if "name" in spec and not isinstance(spec["name"], str):
        raise bad_request("name must be a string")
    name = _string(spec, "name")
    if name is not None and len(name) > PROJECT_NAME_MAX:
        raise bad_request(f"name must be at most {PROJECT_NAME_MAX} characters")
    retention = spec.get("history_retention_seconds")
    if retention is not None:
        if not isinstance(retention, int) or isinstance(retention, bool) or not 0 <= retention <= 2592000:
            raise bad_request("history_retention_seconds must be an integer from 0 to 2592000")
        if retention != history_seconds:
            raise bad_request(
                f"history_retention_seconds: the local server keeps a fixed {history_seconds} s "
                "of history; it cannot be changed"
            )
    for key in ("settings", "default_endpoint_settings"):
        # of the settings, preload libraries are applied (`preload_libraries` reads them)
        others = {k for k in _object(spec, key) if not (key == "settings" and k == "preload_libraries")}
        if others:
            raise bad_request(f"{key}: the local server has no project {key.replace('_', ' ')} to change "
                              f"({', '.join(sorted(others))})")
    return name


def preload_libraries(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """`project.settings.preload_libraries` of a project update (Neon's PreloadLibraries:
    `use_defaults`, `enabled_libraries`), as kept; None when not given."""
    settings = _object(_object(body, "project"), "settings")
    if "preload_libraries" not in settings:
        return None
    spec = _object(settings, "preload_libraries", required=True)
    unknown = sorted(set(spec) - {"use_defaults", "enabled_libraries"})
    if unknown:
        raise bad_request(f"settings.preload_libraries has no field {unknown[0]!r}")
    libraries = spec.get("enabled_libraries") or []
    if not isinstance(libraries, list) or not all(isinstance(name, str) for name in libraries):
        raise bad_request("settings.preload_libraries.enabled_libraries must be a list of strings")
    kept: dict[str, Any] = {"enabled_libraries": list(dict.fromkeys(libraries))}
    use_defaults = _bool(spec, "use_defaults")
    if use_defaults is not None:
        kept["use_defaults"] = use_defaults
    return kept


@dataclass(frozen=True)
class Restore:
    source_branch_id: str
    preserve_under_name: str | None
    # source_lsn / source_timestamp: the source's state at that point (None: its head).
    at: PointInTime | None = None


def restore(body: Mapping[str, Any]) -> Restore:
    source = _string(body, "source_branch_id", required=True)
    assert source is not None
    at = point_in_time(body, "source_lsn", "source_timestamp")
    return Restore(source, branch_name(_string(body, "preserve_under_name")), at)


@dataclass(frozen=True)
class SnapshotRestore:
    name: str | None
    target_branch_id: str | None
    finalize: bool


def snapshot_restore(body: Mapping[str, Any], query: Mapping[str, Any]) -> SnapshotRestore:
    """`POST /snapshots/{id}/restore`: the body's fields; `name` may still come in the
    query, which the reference keeps as a deprecated form."""
    name = branch_name(_string(body, "name") or _string(query, "name"))
    return SnapshotRestore(name, _string(body, "target_branch_id"), bool(_bool(body, "finalize_restore")))


def snapshot_update(body: Mapping[str, Any]) -> dict[str, Any]:
    """`PATCH /snapshots/{id}`: `{"snapshot": {"name", "expires_at"}}`, the fields given
    (`expires_at` null clears it; neonctl 5 sends it, a newer reference than 2.7.3's SDK)."""
    spec = _object(body, "snapshot", required=True)
    changes: dict[str, Any] = {}
    if "name" in spec:
        if not isinstance(spec["name"], str) or not spec["name"].strip():
            raise bad_request("snapshot.name must be a non-empty string")
        changes["name"] = spec["name"]
    if "expires_at" in spec:
        if spec["expires_at"] is not None and not isinstance(spec["expires_at"], str):
            raise bad_request("snapshot.expires_at must be an RFC 3339 timestamp or null")
        changes["expires_at"] = spec["expires_at"]
    return changes


def finalize_name(body: Mapping[str, Any]) -> str | None:
    """`POST /branches/{id}/finalize_restore`: the replaced branch's new name, if given."""
    return branch_name(_string(body, "name"))


@dataclass(frozen=True)
class EndpointCreate:
    branch_id: str
    settings: EndpointSettings


def endpoint_create(body: Mapping[str, Any]) -> EndpointCreate:
    spec = _object(body, "endpoint", required=True)
    branch_id = _string(spec, "branch_id", required=True)
    assert branch_id is not None
    return EndpointCreate(branch_id, endpoint_settings(spec, type_required=True))


@dataclass(frozen=True)
class EndpointUpdate:
    branch_id: str | None
    settings: EndpointSettings


def endpoint_update(body: Mapping[str, Any]) -> EndpointUpdate:
    spec = _object(body, "endpoint", required=True)
    if "type" in spec:
        raise bad_request("an endpoint's type cannot be changed")
    return EndpointUpdate(_string(spec, "branch_id"), endpoint_settings(spec, type_required=False))


def role_create(body: Mapping[str, Any]) -> str:
    name = pg_name(_string(_object(body, "role", required=True), "name"), "role")
    if name in CLUSTER_ROLES:  # never a branch's: no API call yields a superuser session (#24)
        raise bad_request(f"role name {name!r} is reserved")
    return name


@dataclass(frozen=True)
class DatabaseChange:
    name: str | None
    owner_name: str | None


def database_create(body: Mapping[str, Any]) -> DatabaseChange:
    spec = _object(body, "database", required=True)
    return DatabaseChange(
        pg_name(_string(spec, "name"), "database"), pg_name(_string(spec, "owner_name"), "owner role")
    )


def database_update(body: Mapping[str, Any]) -> DatabaseChange:
    spec = _object(body, "database", required=True)
    name, owner = _string(spec, "name"), _string(spec, "owner_name")
    return DatabaseChange(
        pg_name(name, "database") if name is not None else None,
        pg_name(owner, "owner role") if owner is not None else None,
    )


# ---------------------------------------------------------------------- lists


def limit(query: Mapping[str, str], high: int, default: int | None = None) -> int | None:
    raw = query.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise bad_request(f"limit must be an integer from 1 to {high}")
    return int(raw)


def choice(query: Mapping[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = query.get(key) or default
    if value not in allowed:
        raise bad_request(f"{key} must be one of {', '.join(allowed)}")
    return value


def encode_cursor(position: Mapping[str, Any]) -> str:
    """An opaque cursor, as Neon's are to clients: where the next page starts."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request("cursor is not one this server gave") from None
    if not isinstance(data, dict):
        raise bad_request("cursor is not one this server gave")
    return data
