"""Plumbing shared by the local Neon API's route modules: error answers, JSON bodies,
the project a path names.

Errors answer `{"code", "message", "request_id"}` with the HTTP status, as Neon's do;
`api` turns an `ApiError` (and anything unexpected, as a 500) into that body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api.api_shapes import operations_json
from cathouse_harness.local.api.api_validation import bad_request
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.state import OperationRecord
from cathouse_harness.support.log import get_logger
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = get_logger("local.app")

Handler = Callable[[Request], Awaitable[Response]]


def error_response(
    status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "request_id": request_id},
        status_code=status,
        headers=headers,
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or ids.request_id())


def api(handler: Handler) -> Handler:
    """Turn `ApiError` (and anything unexpected) into Neon's error body."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, request_id_of(request))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                500, "INTERNAL_ERROR", "internal error in the local server", request_id_of(request)
            )

    return wrapped


async def json_body(request: Request) -> dict[str, Any]:
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


def neon_of(request: Request) -> LocalNeon:
    neon: LocalNeon = request.app.state.neon
    return neon


def project_of(request: Request) -> LocalNeon:
    """The server, once the path's project is this server's (404 otherwise)."""
    neon = neon_of(request)
    neon.check_project(request.path_params["project_id"])
    return neon


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def with_operations(
    neon: LocalNeon, key: str, data: dict[str, Any], ops: list[OperationRecord], status: int = 200
) -> JSONResponse:
    """A mutation's answer: the object changed, under `key`, and its operations."""
    return ok({key: data, "operations": operations_json(neon, ops)}, status)


def gone() -> Response:
    """Neon's answer to deleting what does not exist (or no longer does)."""
    return Response(status_code=204)
