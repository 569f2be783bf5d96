"""What Neon's API v2 reference says its answers look like, and a checker for them.

Facts taken from Neon's published OpenAPI v2 document (the `v2` reference as of
October 2025): for each object the local server serves, the fields the reference marks
required, the optional ones it lists, and their JSON types; for each route, its success
status and the object its answer is. Written down here in our own form: a checker needs
names and types, not the reference's prose, examples or nesting.

A value is checked structurally: required fields present, no field the reference does
not list (unless the object is open, like `settings`), each value of its type (`null`
is never a valid answer value: Neon leaves optional fields out), enums within their
values, timestamps RFC 3339. `problems()` returns every mismatch as a readable line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

# ---------------------------------------------------------------------- spec values

STR = "string"
INT = "integer"
NUM = "number"
BOOL = "boolean"
DATETIME = "date-time"  # a string in RFC 3339 form


@dataclass(frozen=True)
class Enum:
    values: frozenset[str]


@dataclass(frozen=True)
class ListOf:
    item: Spec


@dataclass(frozen=True)
class MapOf:
    """A JSON object with free keys and values of one kind (`additionalProperties`)."""

    value: Spec


@dataclass(frozen=True)
class Obj:
    name: str
    required: Mapping[str, Spec] = field(default_factory=dict)
    optional: Mapping[str, Spec] = field(default_factory=dict)
    # Open objects (settings and the like) may carry fields not listed here.
    open: bool = False


Spec = Union[str, Enum, ListOf, MapOf, Obj]  # noqa: UP007 (a runtime alias; `|` needs the classes)

ANY_OBJECT = Obj("object", open=True)


def enum(*values: str) -> Enum:
    return Enum(frozenset(values))


# ---------------------------------------------------------------------- objects

BRANCH_STATE = STR  # the reference describes the values but does not close the list
ENDPOINT_STATE = enum("init", "active", "idle")
OPERATION_STATUS = enum(
    "scheduling", "running", "finished", "failed", "error", "cancelling", "cancelled", "skipped"
)
OPERATION_ACTION = enum(
    "create_compute",
    "create_timeline",
    "start_compute",
    "suspend_compute",
    "apply_config",
    "check_availability",
    "delete_timeline",
    "create_branch",
    "import_data",
    "tenant_ignore",
    "tenant_attach",
    "tenant_detach",
    "tenant_reattach",
    "replace_safekeeper",
    "disable_maintenance",
    "apply_storage_config",
    "prepare_secondary_pageserver",
    "switch_pageserver",
    "detach_parent_branch",
    "timeline_archive",
    "timeline_unarchive",
    "start_reserved_compute",
    "sync_dbs_and_roles_from_compute",
    "apply_schema_from_branch",
    "timeline_mark_invisible",
    "prewarm_replica",
    "promote_replica",
    "set_storage_non_dirty",
)

PROJECT_COMMON: dict[str, Spec] = {
    "id": STR,
    "platform_id": STR,
    "region_id": STR,
    "name": STR,
    "provisioner": STR,
    "pg_version": INT,
    "proxy_host": STR,
    "branch_logical_size_limit": INT,
    "branch_logical_size_limit_bytes": INT,
    "store_passwords": BOOL,
    "cpu_used_sec": INT,
    "creation_source": STR,
    "created_at": DATETIME,
    "updated_at": DATETIME,
    "owner_id": STR,
}
PROJECT_COMMON_OPTIONAL: dict[str, Spec] = {
    "default_endpoint_settings": ANY_OBJECT,
    "settings": ANY_OBJECT,
    "maintenance_starts_at": DATETIME,
    "synthetic_storage_size": INT,
    "quota_reset_at": DATETIME,
    "compute_last_active_at": DATETIME,
    "org_id": STR,
    "hipaa_enabled_at": DATETIME,
}

PROJECT = Obj(
    "Project",
    required={
        **PROJECT_COMMON,
        "data_storage_bytes_hour": INT,
        "data_transfer_bytes": INT,
        "written_data_bytes": INT,
        "compute_time_seconds": INT,
        "active_time_seconds": INT,
        "history_retention_seconds": INT,
        "consumption_period_start": DATETIME,
        "consumption_period_end": DATETIME,
    },
    optional={
        **PROJECT_COMMON_OPTIONAL,
        "owner": ANY_OBJECT,
        "maintenance_scheduled_for": DATETIME,
    },
)

PROJECT_LIST_ITEM = Obj(
    "ProjectListItem",
    required={**PROJECT_COMMON, "active_time": INT},
    optional={**PROJECT_COMMON_OPTIONAL, "org_name": STR, "history_retention_seconds": INT},
)

BRANCH = Obj(
    "Branch",
    required={
        "id": STR,
        "project_id": STR,
        "name": STR,
        "current_state": BRANCH_STATE,
        "state_changed_at": DATETIME,
        "creation_source": STR,
        "created_at": DATETIME,
        "updated_at": DATETIME,
        "default": BOOL,
        "protected": BOOL,
        "cpu_used_sec": INT,
        "active_time_seconds": INT,
        "compute_time_seconds": INT,
        "written_data_bytes": INT,
        "data_transfer_bytes": INT,
    },
    optional={
        "parent_id": STR,
        "parent_lsn": STR,
        "parent_timestamp": DATETIME,
        "pending_state": BRANCH_STATE,
        "logical_size": INT,
        "primary": BOOL,
        "ttl_interval_seconds": INT,
        "expires_at": DATETIME,
        "last_reset_at": DATETIME,
        "created_by": ANY_OBJECT,
        "init_source": STR,
        "restore_status": STR,
        "restored_from": STR,
        "restored_as": STR,
        "restricted_actions": ListOf(Obj("BranchRestrictedAction", {"name": STR, "reason": STR})),
    },
)

ENDPOINT = Obj(
    "Endpoint",
    required={
        "host": STR,
        "id": STR,
        "project_id": STR,
        "branch_id": STR,
        "autoscaling_limit_min_cu": NUM,
        "autoscaling_limit_max_cu": NUM,
        "region_id": STR,
        "type": enum("read_only", "read_write"),
        "current_state": ENDPOINT_STATE,
        "settings": ANY_OBJECT,
        "pooler_enabled": BOOL,
        "pooler_mode": enum("transaction"),
        "disabled": BOOL,
        "passwordless_access": BOOL,
        "creation_source": STR,
        "created_at": DATETIME,
        "updated_at": DATETIME,
        "proxy_host": STR,
        "suspend_timeout_seconds": INT,
        "provisioner": STR,
    },
    optional={
        "name": STR,
        "pending_state": ENDPOINT_STATE,
        "last_active": DATETIME,
        "started_at": DATETIME,
        "suspended_at": DATETIME,
        "compute_release_version": STR,
    },
)

OPERATION = Obj(
    "Operation",
    required={
        "id": STR,
        "project_id": STR,
        "action": OPERATION_ACTION,
        "status": OPERATION_STATUS,
        "failures_count": INT,
        "created_at": DATETIME,
        "updated_at": DATETIME,
        "total_duration_ms": INT,
    },
    optional={"branch_id": STR, "endpoint_id": STR, "error": STR, "retry_at": DATETIME},
)

ROLE = Obj(
    "Role",
    required={"branch_id": STR, "name": STR, "created_at": DATETIME, "updated_at": DATETIME},
    optional={"password": STR, "protected": BOOL},
)

DATABASE = Obj(
    "Database",
    required={
        "id": INT,
        "branch_id": STR,
        "name": STR,
        "owner_name": STR,
        "created_at": DATETIME,
        "updated_at": DATETIME,
    },
)

AUTH_ACCOUNT = Obj(
    "CurrentUserAuthAccount",
    required={
        "email": STR,
        "image": STR,
        "login": STR,
        "name": STR,
        "provider": enum("github", "google", "hasura", "microsoft", "microsoftv2", "vercelmp", "keycloak"),
    },
)

BILLING_ACCOUNT = Obj(
    "BillingAccount",
    required={
        "state": enum("UNKNOWN", "active", "suspended", "deactivated", "deleted"),
        "payment_source": Obj(
            "PaymentSource",
            required={"type": STR},
            optional={"card": Obj("PaymentSourceBankCard", open=True)},
        ),
        "subscription_type": enum(
            "UNKNOWN", "direct_sales", "aws_marketplace", "free_v2", "launch", "scale", "business",
            "vercel_pg_legacy",
        ),
        "payment_method": enum(
            "UNKNOWN", "none", "stripe", "direct_payment", "aws_mp", "azure_mp", "vercel_mp", "staff",
            "trial", "sponsorship",
        ),
        "quota_reset_at_last": DATETIME,
        "name": STR,
        "email": STR,
        "address_city": STR,
        "address_country": STR,
        "address_line1": STR,
        "address_line2": STR,
        "address_postal_code": STR,
        "address_state": STR,
    },
    optional={
        "address_country_name": STR,
        "orb_portal_url": STR,
        "tax_id": STR,
        "tax_id_type": STR,
    },
)

API_KEY_ITEM = Obj(
    "ApiKeysListResponseItem",
    required={
        "id": INT,
        "name": STR,
        "created_at": DATETIME,
        "created_by": Obj("ApiKeyCreatorData", required={"id": STR, "name": STR, "image": STR}),
        "last_used_from_addr": STR,
    },
    optional={"last_used_at": DATETIME},
)

PROJECT_PERMISSION = Obj(
    "ProjectPermission",
    required={"id": STR, "granted_to_email": STR, "granted_at": DATETIME},
    optional={"revoked_at": DATETIME},
)

# Items of lists the local server always answers empty (features a new project has
# none of); their required fields, so an item would be checked if one ever appeared.
JWKS = Obj(
    "JWKS",
    required={"id": STR, "project_id": STR, "jwks_url": STR, "provider_name": STR,
              "created_at": DATETIME, "updated_at": DATETIME},
    optional={"branch_id": STR, "jwt_audience": STR, "role_names": ListOf(STR)},
)
VPC_ENDPOINT = Obj("VPCEndpoint", required={"vpc_endpoint_id": STR, "label": STR})
SNAPSHOT = Obj(
    "Snapshot",
    required={"id": STR, "name": STR, "created_at": DATETIME},
    optional={"lsn": STR, "timestamp": DATETIME, "source_branch_id": STR,
              "expires_at": DATETIME, "manual": BOOL, "full_size": INT, "diff_size": INT},
)
MASKING_RULE = Obj(
    "MaskingRule",
    required={"database_name": STR, "schema_name": STR, "table_name": STR, "column_name": STR},
    optional={"masking_function": STR, "masking_value": STR},
)
BACKUP_SCHEDULE_ITEM = Obj("BackupScheduleItem", required={"frequency": STR})
PRELOAD_LIBRARY = Obj(
    "AvailablePreloadLibrary",
    required={"library_name": STR, "description": STR, "is_default": BOOL,
              "is_experimental": BOOL, "version": STR},
)

CURRENT_USER = Obj(
    "CurrentUserInfoResponse",
    required={
        "active_seconds_limit": INT,
        "id": STR,
        "email": STR,
        "login": STR,
        "name": STR,
        "last_name": STR,
        "image": STR,
        "projects_limit": INT,
        "branches_limit": INT,
        "max_autoscaling_limit": NUM,
        "auth_accounts": ListOf(AUTH_ACCOUNT),
        "plan": STR,
        "billing_account": BILLING_ACCOUNT,
    },
    optional={"compute_seconds_limit": INT},
)

CONNECTION_DETAILS = Obj(
    "ConnectionDetails",
    required={
        "connection_uri": STR,
        "connection_parameters": Obj(
            "ConnectionParameters",
            required={"database": STR, "password": STR, "role": STR, "host": STR, "pooler_host": STR},
        ),
    },
)

ANNOTATION = Obj(
    "AnnotationData",
    required={"object": Obj("AnnotationObjectData", {"type": STR, "id": STR}), "value": MapOf(STR)},
    optional={"created_at": DATETIME, "updated_at": DATETIME},
)

# Lists of projects and operations page with a cursor (`pagination.cursor`, required when
# `pagination` is there); the branch list pages with `pagination.next`.
PAGINATION = Obj("Pagination", required={"cursor": STR})
CURSOR_PAGINATION = Obj("CursorPagination", optional={"next": STR, "sort_by": STR, "sort_order": STR})

REGION = Obj(
    "RegionResponse",
    required={"region_id": STR, "name": STR, "default": BOOL, "geo_lat": STR, "geo_long": STR},
)

ORGANIZATION = Obj(
    "Organization",
    required={
        "id": STR,
        "name": STR,
        "handle": STR,
        "plan": STR,
        "created_at": DATETIME,
        "managed_by": STR,
        "updated_at": DATETIME,
    },
    optional={"allow_hipaa_projects": BOOL},
)

GENERAL_ERROR = Obj("GeneralError", required={"code": STR, "message": STR}, optional={"request_id": STR})


# ---------------------------------------------------------------------- answers


def answer(name: str, optional: Mapping[str, Spec] | None = None, **required: Spec) -> Obj:
    return Obj(name, required=required, optional=optional or {})


_OPS = ListOf(OPERATION)
BRANCH_OPERATIONS = answer("BranchOperations", branch=BRANCH, operations=_OPS)
ENDPOINT_OPERATIONS = answer("EndpointOperations", endpoint=ENDPOINT, operations=_OPS)
ROLE_OPERATIONS = answer("RoleOperations", role=ROLE, operations=_OPS)
DATABASE_OPERATIONS = answer("DatabaseOperations", database=DATABASE, operations=_OPS)

P = "/projects/{project_id}"
B = P + "/branches/{branch_id}"
E = P + "/endpoints/{endpoint_id}"


@dataclass(frozen=True)
class Route:
    status: int  # the success status
    body: Obj | ListOf  # an object, or (`GET /api_keys`) a bare array
    # The reference's 204 "it doesn't exist or has already been deleted" (no body).
    gone_204: bool = False


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/auth"): Route(
        200,
        answer(
            "AuthDetailsResponse",
            {"auth_data": STR},
            account_id=STR,
            auth_method=enum("keycloak", "session_cookie", "api_key_user", "api_key_org", "oauth"),
        ),
    ),
    ("GET", "/users/me"): Route(200, CURRENT_USER),
    ("GET", "/users/me/organizations"): Route(
        200, answer("OrganizationsResponse", organizations=ListOf(ORGANIZATION))
    ),
    ("GET", "/regions"): Route(200, answer("ActiveRegionsResponse", regions=ListOf(REGION))),
    ("GET", "/projects"): Route(
        200,
        answer(
            "ListProjects",
            {"unavailable_project_ids": ListOf(STR), "pagination": PAGINATION},
            projects=ListOf(PROJECT_LIST_ITEM),
            applications=MapOf(ListOf(STR)),
            integrations=MapOf(ListOf(STR)),
        ),
    ),
    ("GET", "/projects/shared"): Route(
        200,
        answer(
            "ListSharedProjects",
            {"unavailable_project_ids": ListOf(STR), "pagination": PAGINATION},
            projects=ListOf(PROJECT_LIST_ITEM),
        ),
    ),
    ("GET", "/api_keys"): Route(200, ListOf(API_KEY_ITEM)),
    ("GET", P): Route(200, answer("ProjectResponse", project=PROJECT)),
    ("PATCH", P): Route(200, answer("ProjectOperations", project=PROJECT, operations=_OPS)),
    ("GET", P + "/permissions"): Route(
        200, answer("ProjectPermissions", project_permissions=ListOf(PROJECT_PERMISSION))
    ),
    ("GET", P + "/jwks"): Route(200, answer("ProjectJWKSResponse", jwks=ListOf(JWKS))),
    ("GET", P + "/vpc_endpoints"): Route(
        200, answer("VPCEndpointsResponse", endpoints=ListOf(VPC_ENDPOINT))
    ),
    ("GET", P + "/snapshots"): Route(200, answer("ListSnapshots", snapshots=ListOf(SNAPSHOT))),
    ("POST", B + "/snapshot"): Route(200, answer("CreateSnapshot", snapshot=SNAPSHOT, operations=_OPS)),
    ("PATCH", P + "/snapshots/{snapshot_id}"): Route(200, answer("UpdateSnapshot", snapshot=SNAPSHOT)),
    ("DELETE", P + "/snapshots/{snapshot_id}"): Route(202, answer("OperationsResponse", operations=_OPS)),
    ("POST", P + "/snapshots/{snapshot_id}/restore"): Route(
        200, answer("RestoredSnapshot", {"endpoints": ListOf(ENDPOINT)}, branch=BRANCH, operations=_OPS)
    ),
    ("POST", B + "/finalize_restore"): Route(200, answer("OperationsResponse", operations=_OPS)),
    ("GET", P + "/available_preload_libraries"): Route(
        200, answer("AvailablePreloadLibraries", {"libraries": ListOf(PRELOAD_LIBRARY)})
    ),
    ("GET", B + "/backup_schedule"): Route(
        200, answer("BackupSchedule", schedule=ListOf(BACKUP_SCHEDULE_ITEM))
    ),
    ("GET", B + "/masking_rules"): Route(
        200, answer("MaskingRulesResponse", masking_rules=ListOf(MASKING_RULE))
    ),
    ("GET", P + "/branches"): Route(
        200,
        answer(
            "ListBranches",
            {"pagination": CURSOR_PAGINATION},
            branches=ListOf(BRANCH),
            annotations=MapOf(ANNOTATION),
        ),
    ),
    ("POST", P + "/branches"): Route(
        201,
        answer(
            "CreatedBranch",
            {"connection_uris": ListOf(CONNECTION_DETAILS)},
            branch=BRANCH,
            endpoints=ListOf(ENDPOINT),
            operations=_OPS,
            roles=ListOf(ROLE),
            databases=ListOf(DATABASE),
        ),
    ),
    ("GET", P + "/branches/count"): Route(200, answer("BranchesCountResponse", count=INT)),
    ("GET", B): Route(200, answer("BranchAndAnnotation", branch=BRANCH, annotation=ANNOTATION)),
    ("PATCH", B): Route(200, BRANCH_OPERATIONS),
    ("DELETE", B): Route(200, BRANCH_OPERATIONS, gone_204=True),
    ("POST", B + "/restore"): Route(200, BRANCH_OPERATIONS),
    ("POST", B + "/set_as_default"): Route(200, BRANCH_OPERATIONS),
    ("GET", B + "/schema"): Route(200, answer("BranchSchemaResponse", {"sql": STR, "json": ANY_OBJECT})),
    ("GET", B + "/compare_schema"): Route(200, answer("BranchSchemaCompareResponse", {"diff": STR})),
    ("GET", B + "/endpoints"): Route(200, answer("EndpointsResponse", endpoints=ListOf(ENDPOINT))),
    ("GET", B + "/databases"): Route(200, answer("DatabasesResponse", databases=ListOf(DATABASE))),
    ("POST", B + "/databases"): Route(201, DATABASE_OPERATIONS),
    ("GET", B + "/databases/{database_name}"): Route(200, answer("DatabaseResponse", database=DATABASE)),
    ("PATCH", B + "/databases/{database_name}"): Route(200, DATABASE_OPERATIONS),
    ("DELETE", B + "/databases/{database_name}"): Route(200, DATABASE_OPERATIONS, gone_204=True),
    ("GET", B + "/roles"): Route(200, answer("RolesResponse", roles=ListOf(ROLE))),
    ("POST", B + "/roles"): Route(201, ROLE_OPERATIONS),
    ("GET", B + "/roles/{role_name}"): Route(200, answer("RoleResponse", role=ROLE)),
    ("DELETE", B + "/roles/{role_name}"): Route(200, ROLE_OPERATIONS, gone_204=True),
    ("GET", B + "/roles/{role_name}/reveal_password"): Route(
        200, answer("RolePasswordResponse", password=STR)
    ),
    ("POST", B + "/roles/{role_name}/reset_password"): Route(200, ROLE_OPERATIONS),
    ("GET", P + "/endpoints"): Route(200, answer("EndpointsResponse", endpoints=ListOf(ENDPOINT))),
    ("POST", P + "/endpoints"): Route(201, ENDPOINT_OPERATIONS),
    ("GET", E): Route(200, answer("EndpointResponse", endpoint=ENDPOINT)),
    ("PATCH", E): Route(200, ENDPOINT_OPERATIONS),
    ("DELETE", E): Route(200, ENDPOINT_OPERATIONS, gone_204=True),
    ("POST", E + "/start"): Route(200, ENDPOINT_OPERATIONS),
    ("POST", E + "/suspend"): Route(200, ENDPOINT_OPERATIONS),
    ("POST", E + "/restart"): Route(200, ENDPOINT_OPERATIONS),
    ("GET", P + "/operations"): Route(
        200, answer("ListOperations", {"pagination": PAGINATION}, operations=_OPS)
    ),
    ("GET", P + "/operations/{operation_id}"): Route(200, answer("OperationResponse", operation=OPERATION)),
    ("GET", P + "/connection_uri"): Route(200, answer("ConnectionURIResponse", uri=STR)),
}

# Query parameter ranges the reference states (lists).
LIMITS = {
    "/projects": (1, 400),
    "/projects/shared": (1, 400),
    P + "/branches": (1, 10000),
    P + "/operations": (1, 1000),
}
SORT_ORDERS = frozenset({"asc", "desc"})
BRANCH_SORT_BY = frozenset({"name", "created_at", "updated_at"})
ANNOTATION_MAX_PROPERTIES = 50
BRANCH_NAME_MAX = 256
ROLE_NAME_MAX_BYTES = 63


# ---------------------------------------------------------------------- checking

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE)


def _is(kind: str, value: Any) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == DATETIME:
        return isinstance(value, str) and bool(_RFC3339.match(value))
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    raise ValueError(f"unknown kind {kind!r}")


def problems(value: Any, spec: Spec, where: str = "$") -> list[str]:
    """Every way `value` differs from `spec`, one line each (empty: it conforms)."""
    if isinstance(spec, str):
        return [] if _is(spec, value) else [f"{where}: expected {spec}, got {value!r}"]
    if isinstance(spec, Enum):
        if isinstance(value, str) and value in spec.values:
            return []
        return [f"{where}: {value!r} is not one of {sorted(spec.values)}"]
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {type(value).__name__}"]
        return [
            p
            for i, item in enumerate(value)
            for p in problems(item, spec.item, f"{where}[{i}]")
        ]
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        return [
            p
            for k, item in value.items()
            for p in problems(item, spec.value, f"{where}.{k}")
        ]
    return _object_problems(value, spec, where)


def _object_problems(value: Any, spec: Obj, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected {spec.name} (an object), got {type(value).__name__}"]
    found = [f"{where}: {spec.name} lacks required {key!r}" for key in spec.required if key not in value]
    for key, item in value.items():
        inner = spec.required.get(key) or spec.optional.get(key)
        if inner is None:
            if not spec.open:
                found.append(f"{where}: {spec.name} has {key!r}, which Neon's reference does not list")
            continue
        found += problems(item, inner, f"{where}.{key}")
    return found


# ---------------------------------------------------------------------- whole answers


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(template)) + "$")


# Literal routes first: `/branches/count` must not be taken for `/branches/{branch_id}`.
_MATCHERS = sorted(
    ((method, template, _pattern(template)) for method, template in ROUTES),
    key=lambda item: item[1].count("{"),
)


def route_of(method: str, path: str) -> tuple[str, str] | None:
    """The reference's (method, route template) for a request path below /api/v2."""
    for candidate, template, pattern in _MATCHERS:
        if candidate == method and pattern.match(path):
            return method, template
    return None


def answer_problems(method: str, path: str, status: int, body: Any) -> list[str]:
    """How one answer differs from the reference: its status for the route, and its body
    against the route's object (errors: against GeneralError)."""
    where = f"{method} {path} -> {status}"
    if status >= 400:
        return [f"{where}: {p}" for p in problems(body, GENERAL_ERROR)]
    route = route_of(method, path)
    if route is None:
        return [f"{where}: not a route of Neon's reference"]
    expected = ROUTES[route]
    if status == 204 and expected.gone_204:
        return [] if body in (None, b"", "") else [f"{where}: a 204 carries no body"]
    if status != expected.status:
        return [f"{where}: the reference answers {expected.status}"]
    return [f"{where}: {p}" for p in problems(body, expected.body)]
