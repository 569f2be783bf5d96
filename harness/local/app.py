"""The HTTP face of the local Neon server: Neon API v2 routes and JSON shapes (Starlette).

All routes live under `/api/v2` and need `Authorization: Bearer <key>`; errors answer
`{"code", "message", "request_id"}` with the HTTP status, and every answer carries the
request id in `X-Neon-Ret-Request-Id` (and `X-Request-Id`). Optional fields Neon leaves
out when empty (`expires_at`, `pending_state`, a root branch's `parent_id`) are left out.

Local extras, ignored by Neon clients: endpoints carry `port`, `pooler_host` and
`pooler_port`; `connection_parameters` carry `port` and `pooler_port`; branches'
`logical_size` is not measured and reads 0. Admin routes under `/api/v2/_local/` (faults,
server info) take the same Bearer key and are never subject to injected faults.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harness.local import ids
from harness.local.control import ApiError, LocalNeon, bad_request
from harness.local.faults import FaultInjector, faults_from_json
from harness.local.state import BranchRecord, EndpointRecord, OperationRecord
from harness.log import get_logger

log = get_logger("local.app")

PREFIX = "/api/v2"
REQUEST_ID_HEADERS = (b"x-neon-ret-request-id", b"x-request-id")
# How long a GET of a running operation may wait for it to finish before answering
# (it then says `running`, as Neon does, and the client polls again).
OPERATION_LONG_POLL = 0.1

Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------------- JSON shapes


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def branch_json(neon: LocalNeon, b: BranchRecord) -> dict[str, Any]:
    return _drop_none(
        {
            "id": b.id,
            "project_id": neon.state.project_id,
            "parent_id": b.parent_id,
            "parent_lsn": "0/0" if b.parent_id else None,
            "parent_timestamp": b.parent_timestamp,
            "name": b.name,
            "current_state": b.current_state,
            "pending_state": b.pending_state,
            "state_changed_at": b.state_changed_at or b.updated_at,
            "logical_size": 0,
            "creation_source": "cathouse-local",
            "primary": b.default,
            "default": b.default,
            "protected": b.protected,
            "cpu_used_sec": 0,
            "compute_time_seconds": 0,
            "active_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
            "created_at": b.created_at,
            "updated_at": b.updated_at,
            "expires_at": b.expires_at,
            "last_reset_at": b.last_reset_at,
            "init_source": b.init_source if b.parent_id else None,
        }
    )


def annotation_json(b: BranchRecord) -> dict[str, Any] | None:
    if b.annotation is None:
        return None
    return {
        "object": {"type": "console/branch", "id": b.id},
        "value": dict(b.annotation),
        "created_at": b.annotation_created_at,
        "updated_at": b.annotation_updated_at,
    }


def endpoint_json(neon: LocalNeon, ep: EndpointRecord) -> dict[str, Any]:
    return _drop_none(
        {
            "id": ep.id,
            "host": neon.endpoint_host(ep),
            "port": ep.direct_port,
            "pooler_host": neon.endpoint_host(ep, pooled=True),
            "pooler_port": ep.pooled_port,
            "project_id": neon.state.project_id,
            "branch_id": ep.branch_id,
            "region_id": "local",
            "type": "read_write",
            "current_state": ep.current_state,
            "pending_state": ep.pending_state,
            "settings": {},
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 0.25,
            "pooler_enabled": True,
            "pooler_mode": "transaction",
            "disabled": False,
            "passwordless_access": False,
            "creation_source": "cathouse-local",
            "created_at": ep.created_at,
            "updated_at": ep.updated_at,
            "proxy_host": "localhost",
            "suspend_timeout_seconds": 0,
            "provisioner": "k8s-pod",
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


def role_json(neon: LocalNeon, b: BranchRecord, *, with_password: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "branch_id": b.id,
        "name": neon.state.role_name,
        "protected": False,
        "created_at": b.created_at,
        "updated_at": b.created_at,
    }
    if with_password:
        data["password"] = neon.state.role_password
    return data


def database_json(neon: LocalNeon, b: BranchRecord) -> dict[str, Any]:
    return {
        "id": zlib.crc32(b.id.encode()) & 0x7FFFFFFF,
        "branch_id": b.id,
        "name": neon.state.database_name,
        "owner_name": neon.state.role_name,
        "created_at": b.created_at,
        "updated_at": b.created_at,
    }


def project_json(neon: LocalNeon) -> dict[str, Any]:
    state = neon.state
    version = str(getattr(neon.dataplane, "server_version", "") or "")
    major = version.split(".")[0]
    return {
        "id": state.project_id,
        "platform_id": "local",
        "region_id": "local",
        "name": state.project_name,
        "provisioner": "k8s-pod",
        "default_endpoint_settings": {},
        "settings": {},
        "pg_version": int(major) if major.isdigit() else None,
        "proxy_host": "localhost",
        "branch_logical_size_limit": 0,
        "branch_logical_size_limit_bytes": 0,
        "store_passwords": True,
        "creation_source": "cathouse-local",
        "history_retention_seconds": 0,
        "created_at": state.created_at,
        "updated_at": state.created_at,
        "owner_id": "local",
        "default_branch_id": state.default_branch_id,
        "storage": state.storage,
    }


def connection_uris(neon: LocalNeon, eps: list[EndpointRecord]) -> list[dict[str, Any]]:
    state = neon.state
    return [
        {
            "connection_uri": neon.build_uri(ep, pooled=False),
            "connection_parameters": {
                "database": state.database_name,
                "password": state.role_password,
                "role": state.role_name,
                "host": neon.endpoint_host(ep),
                "pooler_host": neon.endpoint_host(ep, pooled=True),
                "port": ep.direct_port,
                "pooler_port": ep.pooled_port,
            },
        }
        for ep in eps
    ]


# ---------------------------------------------------------------------- plumbing


def error_response(
    status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "request_id": request_id},
        status_code=status,
        headers=headers,
    )


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or ids.request_id())


def api(handler: Handler) -> Handler:
    """Turn `ApiError` (and anything unexpected) into Neon's error body."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, _request_id(request))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                500, "INTERNAL_ERROR", "internal error in the local server", _request_id(request)
            )

    return wrapped


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def _neon(request: Request) -> LocalNeon:
    neon: LocalNeon = request.app.state.neon
    return neon


def _project(request: Request) -> LocalNeon:
    neon = _neon(request)
    neon.check_project(request.path_params["project_id"])
    return neon


# ---------------------------------------------------------------------- routes


@api
async def get_auth(request: Request) -> Response:
    return JSONResponse({"account_id": "local", "auth_method": "api_key_user", "provider": "cathouse-local"})


@api
async def get_me(request: Request) -> Response:
    return JSONResponse(
        {
            "id": "local",
            "email": "local@localhost",
            "login": "local",
            "name": "Local developer",
            "projects_limit": 1,
            "branches_limit": 5000,
            "billing_account": {},
        }
    )


@api
async def list_projects(request: Request) -> Response:
    return JSONResponse({"projects": [project_json(_neon(request))], "pagination": {}})


@api
async def get_project(request: Request) -> Response:
    return JSONResponse({"project": project_json(_project(request))})


@api
async def list_branches(request: Request) -> Response:
    neon = _project(request)
    branches = neon.live_branches()
    search = request.query_params.get("search")
    if search:
        needle = search.lower()
        branches = [b for b in branches if needle in b.name.lower() or needle in b.id.lower()]
    sort_by = request.query_params.get("sort_by", "updated_at")
    if sort_by not in ("name", "created_at", "updated_at"):
        raise bad_request("sort_by must be name, created_at or updated_at")
    descending = request.query_params.get("sort_order", "desc") != "asc"
    branches.sort(key=lambda b: (getattr(b, sort_by), b.id), reverse=descending)
    limit = request.query_params.get("limit")
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise bad_request("limit must be a positive integer")
        branches = branches[: int(limit)]
    annotations = {b.id: a for b in branches if (a := annotation_json(b)) is not None}
    return JSONResponse(
        {
            "branches": [branch_json(neon, b) for b in branches],
            "annotations": annotations,
            "pagination": {"sort_by": sort_by, "sort_order": "desc" if descending else "asc"},
        }
    )


@api
async def create_branch(request: Request) -> Response:
    neon = _project(request)
    body = await _json_body(request)
    branch, eps, ops = await neon.create_branch(body)
    return JSONResponse(
        {
            "branch": branch_json(neon, branch),
            "endpoints": [endpoint_json(neon, ep) for ep in eps],
            "operations": [operation_json(neon, op) for op in ops],
            "roles": [role_json(neon, branch, with_password=True)],
            "databases": [database_json(neon, branch)],
            "connection_uris": connection_uris(neon, eps),
        },
        status_code=201,
    )


@api
async def get_branch(request: Request) -> Response:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    data: dict[str, Any] = {"branch": branch_json(neon, branch)}
    annotation = annotation_json(branch)
    if annotation is not None:
        data["annotation"] = annotation
    return JSONResponse(data)


@api
async def update_branch(request: Request) -> Response:
    neon = _project(request)
    body = await _json_body(request)
    branch = neon.update_branch(request.path_params["branch_id"], body)
    return JSONResponse({"branch": branch_json(neon, branch), "operations": []})


@api
async def delete_branch(request: Request) -> Response:
    neon = _project(request)
    branch, ops = neon.delete_branch(request.path_params["branch_id"])
    return JSONResponse(
        {
            "branch": branch_json(neon, branch),
            "operations": [operation_json(neon, op) for op in ops],
        }
    )


@api
async def restore_branch(request: Request) -> Response:
    neon = _project(request)
    body = await _json_body(request)
    branch, ops = neon.restore_branch(request.path_params["branch_id"], body)
    return JSONResponse(
        {
            "branch": branch_json(neon, branch),
            "operations": [operation_json(neon, op) for op in ops],
        }
    )


@api
async def branch_endpoints(request: Request) -> Response:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    return JSONResponse({"endpoints": [endpoint_json(neon, ep) for ep in neon.branch_endpoints(branch.id)]})


@api
async def branch_databases(request: Request) -> Response:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    return JSONResponse({"databases": [database_json(neon, branch)]})


@api
async def branch_database(request: Request) -> Response:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    name = request.path_params["database_name"]
    if name != neon.state.database_name:
        raise ApiError(404, "NOT_FOUND", f"database {name} not found")
    return JSONResponse({"database": database_json(neon, branch)})


@api
async def branch_roles(request: Request) -> Response:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    return JSONResponse({"roles": [role_json(neon, branch)]})


def _role_branch(request: Request) -> tuple[LocalNeon, BranchRecord]:
    neon = _project(request)
    branch = neon.branch(request.path_params["branch_id"])
    name = request.path_params["role_name"]
    if name != neon.state.role_name:
        raise ApiError(404, "NOT_FOUND", f"role {name} not found")
    return neon, branch


@api
async def branch_role(request: Request) -> Response:
    neon, branch = _role_branch(request)
    return JSONResponse({"role": role_json(neon, branch)})


@api
async def reveal_password(request: Request) -> Response:
    neon, _ = _role_branch(request)
    return JSONResponse({"password": neon.state.role_password})


@api
async def list_endpoints(request: Request) -> Response:
    neon = _project(request)
    live = {b.id for b in neon.live_branches()}
    return JSONResponse(
        {
            "endpoints": [
                endpoint_json(neon, ep) for ep in neon.state.endpoints.values() if ep.branch_id in live
            ]
        }
    )


@api
async def get_endpoint(request: Request) -> Response:
    neon = _project(request)
    return JSONResponse({"endpoint": endpoint_json(neon, neon.endpoint(request.path_params["endpoint_id"]))})


@api
async def list_operations(request: Request) -> Response:
    neon = _project(request)
    ops = list(neon.state.operations.values())
    ops.reverse()  # newest first, as Neon lists them
    limit = request.query_params.get("limit")
    if limit and limit.isdigit():
        ops = ops[: int(limit)]
    return JSONResponse({"operations": [operation_json(neon, op) for op in ops], "pagination": {}})


@api
async def get_operation(request: Request) -> Response:
    neon = _project(request)
    op_id = request.path_params["operation_id"]
    # A short, bounded wait for a running operation to finish: the poll that would have
    # found it finished a few milliseconds later is answered as it finishes.
    await neon.wait_settled(neon.operation(op_id), OPERATION_LONG_POLL)
    return JSONResponse({"operation": operation_json(neon, neon.operation(op_id))})


@api
async def get_connection_uri(request: Request) -> Response:
    neon = _project(request)
    q = request.query_params
    uri = neon.connection_uri(
        branch_id=q.get("branch_id"),
        endpoint_id=q.get("endpoint_id"),
        database_name=q.get("database_name"),
        role_name=q.get("role_name"),
        pooled=q.get("pooled", "false").lower() in ("true", "1", "yes"),
    )
    return JSONResponse({"uri": uri})


@api
async def get_faults(request: Request) -> Response:
    injector: FaultInjector = request.app.state.faults
    return JSONResponse({"faults": injector.config.as_json(), "injected": injector.injected})


@api
async def put_faults(request: Request) -> Response:
    injector: FaultInjector = request.app.state.faults
    body = await _json_body(request)
    try:
        config = faults_from_json(body)
    except Exception as exc:  # ConfigError: a one-line message without secrets
        raise bad_request(str(exc)) from None
    injector.configure(config)
    log.info("faults set to %r", config.to_spec() or "none")
    return JSONResponse({"faults": config.as_json(), "injected": 0})


@api
async def get_info(request: Request) -> Response:
    import os

    neon = _neon(request)
    return JSONResponse(
        {
            "project_id": neon.state.project_id,
            "pid": os.getpid(),
            "home": str(neon.home),
            "storage": neon.storage,
            "pgbouncer": bool(getattr(neon.dataplane, "pgbouncer_available", False)),
            "server_version": str(getattr(neon.dataplane, "server_version", "") or ""),
        }
    )


P = PREFIX + "/projects/{project_id}"
B = P + "/branches/{branch_id}"

ROUTES = [
    Route(PREFIX + "/auth", get_auth, methods=["GET"]),
    Route(PREFIX + "/users/me", get_me, methods=["GET"]),
    Route(PREFIX + "/projects", list_projects, methods=["GET"]),
    Route(P, get_project, methods=["GET"]),
    Route(P + "/branches", list_branches, methods=["GET"]),
    Route(P + "/branches", create_branch, methods=["POST"]),
    Route(B, get_branch, methods=["GET"]),
    Route(B, update_branch, methods=["PATCH"]),
    Route(B, delete_branch, methods=["DELETE"]),
    Route(B + "/restore", restore_branch, methods=["POST"]),
    Route(B + "/endpoints", branch_endpoints, methods=["GET"]),
    Route(B + "/databases", branch_databases, methods=["GET"]),
    Route(B + "/databases/{database_name}", branch_database, methods=["GET"]),
    Route(B + "/roles", branch_roles, methods=["GET"]),
    Route(B + "/roles/{role_name}", branch_role, methods=["GET"]),
    Route(B + "/roles/{role_name}/reveal_password", reveal_password, methods=["GET"]),
    Route(P + "/endpoints", list_endpoints, methods=["GET"]),
    Route(P + "/endpoints/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route(P + "/operations", list_operations, methods=["GET"]),
    Route(P + "/operations/{operation_id}", get_operation, methods=["GET"]),
    Route(P + "/connection_uri", get_connection_uri, methods=["GET"]),
    Route(PREFIX + "/_local/faults", get_faults, methods=["GET"]),
    Route(PREFIX + "/_local/faults", put_faults, methods=["PUT"]),
    Route(PREFIX + "/_local/info", get_info, methods=["GET"]),
]


# ---------------------------------------------------------------------- front door


class NeonFront:
    """Request ids, Bearer auth, activity tracking and fault injection around the routes."""

    def __init__(self, app: ASGIApp, *, neon: LocalNeon, api_key: str, faults: FaultInjector) -> None:
        self.app = app
        self.neon = neon
        self._key = api_key.encode()
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ids.request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw_send = send

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(name, request_id.encode()) for name in REQUEST_ID_HEADERS]
                message = {**message, "headers": headers}
            await raw_send(message)

        async def answer(response: Response) -> None:
            await response(scope, receive, send_with_id)

        path: str = scope["path"]
        if not path.startswith(PREFIX + "/"):
            await answer(error_response(404, "NOT_FOUND", "not found", request_id))
            return
        if not self._authorized(scope):
            await answer(
                error_response(
                    401,
                    "UNAUTHORIZED",
                    "authentication required: send Authorization: Bearer <key> with this server's key",
                    request_id,
                )
            )
            return
        self.neon.touch()
        if path.startswith(PREFIX + "/_local/") or not self.faults.config.active:
            await self.app(scope, receive, send_with_id)
            return

        config = self.faults.config
        if config.latency:
            await asyncio.sleep(config.latency)
        fault = self.faults.before_request(scope["method"])
        if fault is None:
            await self.app(scope, receive, send_with_id)
        elif fault.kind == "drop":
            log.info("fault: dropping %s %s", scope["method"], path)
            await drop_connection(raw_send, receive)
        elif fault.kind == "drop_after":
            log.info("fault: serving %s %s, then dropping it", scope["method"], path)

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            await drop_connection(raw_send, receive)
        else:
            await answer(self._fault_response(fault.status, request_id))

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    def _fault_response(self, status: int, request_id: str) -> Response:
        if status == 429:
            return error_response(
                429,
                "TOO_MANY_REQUESTS",
                "rate limit exceeded (injected fault); retry later",
                request_id,
                headers={"Retry-After": self.faults.retry_after_header},
            )
        if status == 423:
            return error_response(
                423,
                "LOCKED",
                "project already has running operations (injected fault); please retry later",
                request_id,
            )
        if status == 503:
            return error_response(
                503, "SERVICE_UNAVAILABLE", "service unavailable (injected fault)", request_id
            )
        return error_response(500, "INTERNAL_ERROR", "internal error (injected fault)", request_id)


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the client's connection without any HTTP answer.

    uvicorn's `send` is a bound method of its request cycle, which holds the transport;
    aborting it resets the TCP connection, and waiting for the disconnect event keeps
    uvicorn from trying to answer 500 on our behalf. Under another server, fall back to
    starting an answer and failing mid-body, which that server ends by closing.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        try:
            async with asyncio.timeout(2):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            pass
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    raise ConnectionAbortedError("connection dropped (injected fault)")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes (404) and methods (405) answer in Neon's error shape too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "BAD_REQUEST")
    message = "no such API route" if status == 404 else str(getattr(exc, "detail", "error"))
    return error_response(status, code, message, _request_id(request))


def create_app(neon: LocalNeon, api_key: str, faults: FaultInjector | None = None) -> ASGIApp:
    """The ASGI app. `neon` must be started (and later stopped) by the caller."""
    injector = faults or neon.faults
    inner = Starlette(routes=ROUTES, exception_handlers={HTTPException: _http_error})
    inner.state.neon = neon
    inner.state.faults = injector
    return NeonFront(inner, neon=neon, api_key=api_key, faults=injector)
