"""The JSON the local Neon API answers with, shaped as Neon's API v2 reference has it.

Every object carries the fields the reference marks required and only fields it lists
(an endpoint names no ports: `host` and `pooler_host` listen on 5432). Optional fields
Neon leaves out when empty (`expires_at`, `pending_state`, a root branch's `parent_id`)
are left out. Usage figures (CPU seconds, bytes written, sizes) are not measured
locally and read 0.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.history import HISTORY_RETENTION_SECONDS
from cathouse_harness.local.control.state import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    RoleRecord,
    SnapshotRecord,
)

REGION = "local"
PROXY_HOST = "localhost"
PROVISIONER = "k8s-pod"
CREATION_SOURCE = "cathouse-local"
ACCOUNT = {
    "id": "local",
    "email": "local@localhost",
    "login": "local",
    "name": "Local",
    "last_name": "developer",
}
_USAGE_ZERO = (
    "cpu_used_sec",
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "data_transfer_bytes",
)


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _month(moment: datetime) -> tuple[str, str]:
    """The consumption period Neon reports: this calendar month (UTC)."""
    start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


def _project_base(neon: LocalNeon) -> dict[str, Any]:
    state = neon.state
    version = str(getattr(neon.dataplane, "server_version", "") or "")
    major = version.split(".")[0]
    return {
        "id": state.project_id,
        "platform_id": REGION,
        "region_id": REGION,
        "name": state.project_name,
        "provisioner": PROVISIONER,
        "default_endpoint_settings": {},
        "settings": {} if state.preload_libraries is None else {"preload_libraries": state.preload_libraries},
        "pg_version": int(major) if major.isdigit() else 18,
        "proxy_host": PROXY_HOST,
        "branch_logical_size_limit": 0,
        "branch_logical_size_limit_bytes": 0,
        "store_passwords": True,
        "cpu_used_sec": 0,
        "creation_source": CREATION_SOURCE,
        "history_retention_seconds": HISTORY_RETENTION_SECONDS,
        "created_at": state.created_at,
        "updated_at": state.project_updated_at or state.created_at,
        "owner_id": ACCOUNT["id"],
    }


def project_json(neon: LocalNeon) -> dict[str, Any]:
    start, end = _month(datetime.now(UTC))
    return {
        **_project_base(neon),
        "active_time_seconds": 0,
        "compute_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
        "data_storage_bytes_hour": 0,
        "consumption_period_start": start,
        "consumption_period_end": end,
    }


def project_item_json(neon: LocalNeon) -> dict[str, Any]:
    """A project in `GET /projects` (Neon's ProjectListItem)."""
    return {**_project_base(neon), "active_time": 0}


def branch_json(neon: LocalNeon, b: BranchRecord) -> dict[str, Any]:
    return _drop_none(
        {
            "id": b.id,
            "project_id": neon.state.project_id,
            "parent_id": b.parent_id,
            "parent_lsn": b.parent_lsn if b.parent_id else None,
            "parent_timestamp": b.parent_timestamp if b.parent_id else None,
            "name": b.name,
            "current_state": b.current_state,
            "pending_state": b.pending_state,
            "state_changed_at": b.state_changed_at or b.updated_at,
            "logical_size": 0,
            "creation_source": CREATION_SOURCE,
            "primary": b.default,
            "default": b.default,
            "protected": b.protected,
            **dict.fromkeys(_USAGE_ZERO, 0),
            "created_at": b.created_at,
            "updated_at": b.updated_at,
            "expires_at": b.expires_at,
            "ttl_interval_seconds": b.ttl_interval_seconds if b.expires_at else None,
            "last_reset_at": b.last_reset_at,
            # the project's own root has none; a schema-only root says what it is
            "init_source": b.init_source if b.parent_id or b.init_source == "schema-only" else None,
            "restore_status": b.restore_status,
            "restored_from": b.restored_from,
            "restored_as": b.restored_as,
        }
    )


def snapshot_json(s: SnapshotRecord) -> dict[str, Any]:
    """A snapshot (Neon's Snapshot): sizes are left out, as Neon leaves them out of one
    it has not measured or does not charge."""
    return _drop_none(
        {
            "id": s.id,
            "name": s.name,
            "lsn": s.lsn,
            "timestamp": s.timestamp,
            "source_branch_id": s.source_branch_id,
            "created_at": s.created_at,
            "expires_at": s.expires_at,
            "manual": True,
        }
    )


def annotation_json(b: BranchRecord) -> dict[str, Any]:
    """A branch's annotation; one without annotation has an empty value (the reference
    makes `annotation` required in a branch's answer)."""
    return _drop_none(
        {
            "object": {"type": "console/branch", "id": b.id},
            "value": dict(b.annotation or {}),
            "created_at": b.annotation_created_at,
            "updated_at": b.annotation_updated_at,
        }
    )


def endpoint_json(neon: LocalNeon, ep: EndpointRecord) -> dict[str, Any]:
    return _drop_none(
        {
            "id": ep.id,
            "host": neon.endpoint_host(ep),
            "project_id": neon.state.project_id,
            "branch_id": ep.branch_id,
            "region_id": REGION,
            "type": ep.type,
            "current_state": ep.current_state,
            "pending_state": ep.pending_state,
            "settings": {},
            "autoscaling_limit_min_cu": ep.autoscaling_limit_min_cu,
            "autoscaling_limit_max_cu": ep.autoscaling_limit_max_cu,
            "pooler_enabled": True,
            "pooler_mode": "transaction",
            "disabled": ep.disabled,
            "passwordless_access": False,
            "creation_source": CREATION_SOURCE,
            "created_at": ep.created_at,
            "updated_at": ep.updated_at,
            "started_at": ep.started_at,
            "suspended_at": ep.suspended_at,
            "proxy_host": PROXY_HOST,
            "suspend_timeout_seconds": ep.suspend_timeout_seconds,
            "provisioner": PROVISIONER,
        }
    )


def operation_json(neon: LocalNeon, op: OperationRecord) -> dict[str, Any]:
    return _drop_none(
        {
            "id": op.id,
            "project_id": neon.state.project_id,
            "branch_id": op.branch_id,
            "endpoint_id": op.endpoint_id,
            "action": op.action,
            "status": op.status,
            "error": op.error,
            "failures_count": op.failures_count,
            "created_at": op.created_at,
            "updated_at": op.updated_at,
            "total_duration_ms": op.total_duration_ms,
        }
    )


def operations_json(neon: LocalNeon, ops: list[OperationRecord]) -> list[dict[str, Any]]:
    return [operation_json(neon, op) for op in ops]


def role_json(branch: BranchRecord, role: RoleRecord, *, password: str | None = None) -> dict[str, Any]:
    return _drop_none(
        {
            "branch_id": branch.id,
            "name": role.name,
            "password": password,
            "protected": role.protected,
            "created_at": role.created_at,
            "updated_at": role.updated_at,
        }
    )


def database_json(branch: BranchRecord, db: DatabaseRecord) -> dict[str, Any]:
    return {
        "id": db.id,
        "branch_id": branch.id,
        "name": db.name,
        "owner_name": db.owner_name,
        "created_at": db.created_at,
        "updated_at": db.updated_at,
    }


def created_branch_json(
    neon: LocalNeon, branch: BranchRecord, eps: list[EndpointRecord], ops: list[OperationRecord]
) -> dict[str, Any]:
    """A create's answer: the branch with its endpoints, operations, roles (with their
    passwords, this branch's own), databases and a connection URI per database."""
    return {
        "branch": branch_json(neon, branch),
        "endpoints": [endpoint_json(neon, ep) for ep in eps],
        "operations": operations_json(neon, ops),
        "roles": [role_json(branch, r, password=r.password) for r in branch.roles.values()],
        "databases": [database_json(branch, db) for db in branch.databases.values()],
        "connection_uris": [
            {
                "connection_uri": neon.build_uri(ep, db.name, db.owner_name, pooled=False),
                "connection_parameters": {
                    "database": db.name,
                    "password": branch.roles[db.owner_name].password,
                    "role": db.owner_name,
                    "host": neon.endpoint_host(ep),
                    "pooler_host": neon.endpoint_host(ep, pooled=True),
                },
            }
            for ep, db in neon.connections(branch, eps)
        ],
    }


def user_json(neon: LocalNeon) -> dict[str, Any]:
    """`/users/me`: the one local account, and the limits this server holds creates to."""
    return {
        **ACCOUNT,
        "image": "",
        "active_seconds_limit": 0,
        "projects_limit": 1,
        "branches_limit": neon.branches_limit,
        "max_autoscaling_limit": 0.25,
        "auth_accounts": [
            {
                "email": ACCOUNT["email"],
                "image": "",
                "login": ACCOUNT["login"],
                "name": ACCOUNT["name"],
                "provider": "keycloak",
            }
        ],
        "plan": "local",
        "billing_account": billing_account_json(neon),
    }


def billing_account_json(neon: LocalNeon) -> dict[str, Any]:
    """The account's billing record: Neon sends it on every `/users/me` and clients
    (neon-api's `me()`) require it. Nothing is billed locally: no payment source or
    method, a free subscription, an empty address; quotas reset with the project."""
    return {
        "state": "active",
        "payment_source": {"type": ""},
        "subscription_type": "free_v2",
        "payment_method": "none",
        "quota_reset_at_last": neon.state.created_at,
        "name": ACCOUNT["name"],
        "email": ACCOUNT["email"],
        "address_city": "",
        "address_country": "",
        "address_line1": "",
        "address_line2": "",
        "address_postal_code": "",
        "address_state": "",
    }


def api_key_json(key_id: int, created_at: str, last_used_at: str, client: str) -> dict[str, Any]:
    """The home's one API key as `GET /api_keys` lists it: never the key itself."""
    return {
        "id": key_id,
        "name": "local",
        "created_at": created_at,
        "created_by": {"id": ACCOUNT["id"], "name": f"{ACCOUNT['name']} {ACCOUNT['last_name']}", "image": ""},
        "last_used_at": last_used_at,
        "last_used_from_addr": client,
    }


def regions_json() -> dict[str, Any]:
    return {
        "regions": [
            {"region_id": REGION, "name": "This machine", "default": True, "geo_lat": "", "geo_long": ""}
        ]
    }
