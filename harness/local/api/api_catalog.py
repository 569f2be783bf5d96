"""Role, database and connection URI routes of the local Neon API."""

from __future__ import annotations

from cathouse_harness.local.api import api_validation as check
from cathouse_harness.local.api.api_http import api, gone, json_body, ok, project_of, with_operations
from cathouse_harness.local.api.api_shapes import database_json, role_json
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.state import BranchRecord
from starlette.requests import Request
from starlette.responses import Response


def _branch(request: Request) -> tuple[LocalNeon, BranchRecord]:
    neon = project_of(request)
    return neon, neon.branch(request.path_params["branch_id"])


async def _branch_databases(request: Request) -> tuple[LocalNeon, BranchRecord]:
    """The branch, its record first told of the databases sessions made or dropped in SQL
    when its data plane learns them from the branch's own instance (Neon's control plane
    learns them from the compute)."""
    neon, branch = _branch(request)
    await _learn_databases(neon, branch)
    return neon, branch


async def _learn_databases(neon: LocalNeon, branch: BranchRecord) -> None:
    learn = getattr(neon.dataplane, "learn_databases", None)
    if learn is not None:
        await learn(branch)


@api
async def list_roles(request: Request) -> Response:
    _, branch = _branch(request)
    return ok({"roles": [role_json(branch, role) for role in branch.roles.values()]})


@api
async def get_role(request: Request) -> Response:
    neon, branch = _branch(request)
    return ok({"role": role_json(branch, neon.catalog.role(branch, request.path_params["role_name"]))})


@api
async def create_role(request: Request) -> Response:
    neon, branch = _branch(request)
    name = check.role_create(await json_body(request))
    role, ops = neon.catalog.create_role(branch.id, name)
    return with_operations(
        neon, "role", role_json(branch, role, password=role.password), ops, 201
    )


@api
async def delete_role(request: Request) -> Response:
    neon, branch = _branch(request)
    deleted = neon.catalog.delete_role(branch.id, request.path_params["role_name"])
    if deleted is None:
        return gone()
    role, ops = deleted
    return with_operations(neon, "role", role_json(branch, role), ops)


@api
async def reveal_password(request: Request) -> Response:
    neon, branch = _branch(request)
    role = neon.catalog.role(branch, request.path_params["role_name"])
    return ok({"password": role.password})


@api
async def reset_password(request: Request) -> Response:
    neon, branch = _branch(request)
    role, password, ops = neon.catalog.reset_password(branch.id, request.path_params["role_name"])
    return with_operations(neon, "role", role_json(branch, role, password=password), ops)


@api
async def list_databases(request: Request) -> Response:
    _, branch = await _branch_databases(request)
    return ok({"databases": [database_json(branch, db) for db in branch.databases.values()]})


@api
async def get_database(request: Request) -> Response:
    neon, branch = await _branch_databases(request)
    db = neon.catalog.database(branch, request.path_params["database_name"])
    return ok({"database": database_json(branch, db)})


@api
async def create_database(request: Request) -> Response:
    neon, branch = await _branch_databases(request)
    db, ops = neon.catalog.create_database(branch.id, check.database_create(await json_body(request)))
    return with_operations(neon, "database", database_json(branch, db), ops, 201)


@api
async def update_database(request: Request) -> Response:
    neon, branch = await _branch_databases(request)
    change = check.database_update(await json_body(request))
    db, ops = neon.catalog.update_database(branch.id, request.path_params["database_name"], change)
    return with_operations(neon, "database", database_json(branch, db), ops)


@api
async def delete_database(request: Request) -> Response:
    neon, branch = await _branch_databases(request)
    deleted = neon.catalog.delete_database(branch.id, request.path_params["database_name"])
    if deleted is None:
        return gone()
    db, ops = deleted
    return with_operations(neon, "database", database_json(branch, db), ops)


@api
async def get_connection_uri(request: Request) -> Response:
    neon = project_of(request)
    q = request.query_params
    if q.get("database_name"):  # one a session made in SQL (an xdist worker's) has a URI too
        branch_id = q.get("branch_id")
        await _learn_databases(neon, neon.branch(branch_id) if branch_id else neon.state.default_branch)
    uri = neon.connection_uri(
        branch_id=q.get("branch_id"),
        endpoint_id=q.get("endpoint_id"),
        database_name=q.get("database_name"),
        role_name=q.get("role_name"),
        pooled=q.get("pooled", "false").lower() in ("true", "1", "yes"),
    )
    return ok({"uri": uri})
