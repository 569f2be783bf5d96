"""Endpoint routes of the local Neon API: list, get, create, update, delete, start,
suspend, restart."""

from __future__ import annotations

from cathouse_harness.local.api import api_validation as check
from cathouse_harness.local.api.api_http import api, gone, json_body, ok, project_of, with_operations
from cathouse_harness.local.api.api_shapes import endpoint_json
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.state import EndpointRecord, OperationRecord
from starlette.requests import Request
from starlette.responses import Response


def _endpoint_operations(
    neon: LocalNeon, ep: EndpointRecord, ops: list[OperationRecord], status: int = 200
) -> Response:
    return with_operations(neon, "endpoint", endpoint_json(neon, ep), ops, status)


@api
async def list_endpoints(request: Request) -> Response:
    neon = project_of(request)
    return ok({"endpoints": [endpoint_json(neon, ep) for ep in neon.live_endpoints()]})


@api
async def branch_endpoints(request: Request) -> Response:
    neon = project_of(request)
    branch = neon.branch(request.path_params["branch_id"])
    return ok({"endpoints": [endpoint_json(neon, ep) for ep in neon.branch_endpoints(branch.id)]})


@api
async def get_endpoint(request: Request) -> Response:
    neon = project_of(request)
    return ok({"endpoint": endpoint_json(neon, neon.endpoint(request.path_params["endpoint_id"]))})


@api
async def create_endpoint(request: Request) -> Response:
    neon = project_of(request)
    spec = check.endpoint_create(await json_body(request))
    return _endpoint_operations(neon, *await neon.computes.create(spec), status=201)


@api
async def update_endpoint(request: Request) -> Response:
    neon = project_of(request)
    spec = check.endpoint_update(await json_body(request))
    return _endpoint_operations(neon, *neon.computes.update(request.path_params["endpoint_id"], spec))


@api
async def delete_endpoint(request: Request) -> Response:
    neon = project_of(request)
    deleted = neon.computes.delete(request.path_params["endpoint_id"])
    return gone() if deleted is None else _endpoint_operations(neon, *deleted)


@api
async def start_endpoint(request: Request) -> Response:
    neon = project_of(request)
    return _endpoint_operations(neon, *neon.computes.start(request.path_params["endpoint_id"]))


@api
async def suspend_endpoint(request: Request) -> Response:
    neon = project_of(request)
    return _endpoint_operations(neon, *neon.computes.suspend(request.path_params["endpoint_id"]))


@api
async def restart_endpoint(request: Request) -> Response:
    neon = project_of(request)
    return _endpoint_operations(neon, *neon.computes.restart(request.path_params["endpoint_id"]))
