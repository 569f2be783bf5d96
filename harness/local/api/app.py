"""The HTTP face of the local Neon server: Neon API v2 routes (Starlette) and the front
door every request passes.

All routes live under `/api/v2` and need `Authorization: Bearer <key>`; errors answer
`{"code", "message", "request_id"}` with the HTTP status, and every answer carries the
request id in `X-Neon-Ret-Request-Id` (and `X-Request-Id`). The routes are Neon's (see
tests/local/neon_schema.py), in modules by object: `api_project`, `api_branches`,
`api_computes`, `api_catalog`; their JSON is `api_shapes`, their request checks
`api_validation`. Admin routes under `/api/v2/_local/` (faults, server info, the request
journal) take the same Bearer key and are never subject to injected faults or latency.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time

from cathouse_harness.local.api import api_branches as branches
from cathouse_harness.local.api import api_catalog as catalog
from cathouse_harness.local.api import api_computes as computes
from cathouse_harness.local.api import api_project as project
from cathouse_harness.local.api.api_http import error_response, log, request_id_of
from cathouse_harness.local.api.journal import JournalEntry, RequestJournal
from cathouse_harness.local.control import ids
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.sim.faults import FaultInjector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/api/v2"
REQUEST_ID_HEADERS = (b"x-neon-ret-request-id", b"x-request-id")

P = PREFIX + "/projects/{project_id}"
B = P + "/branches/{branch_id}"
E = P + "/endpoints/{endpoint_id}"

ROUTES = [
    Route(PREFIX + "/auth", project.get_auth, methods=["GET"]),
    Route(PREFIX + "/users/me", project.get_me, methods=["GET"]),
    Route(PREFIX + "/users/me/organizations", project.get_organizations, methods=["GET"]),
    Route(PREFIX + "/regions", project.get_regions, methods=["GET"]),
    Route(PREFIX + "/api_keys", project.list_api_keys, methods=["GET"]),
    Route(PREFIX + "/projects", project.list_projects, methods=["GET"]),
    # Before `{project_id}`, which would take "shared" for an id.
    Route(PREFIX + "/projects/shared", project.list_shared_projects, methods=["GET"]),
    Route(P, project.get_project, methods=["GET"]),
    Route(P, project.update_project, methods=["PATCH"]),
    Route(P + "/permissions", project.list_permissions, methods=["GET"]),
    Route(P + "/jwks", project.list_jwks, methods=["GET"]),
    Route(P + "/vpc_endpoints", project.list_vpc_endpoints, methods=["GET"]),
    Route(P + "/snapshots", project.list_snapshots, methods=["GET"]),
    Route(P + "/snapshots/{snapshot_id}", project.update_snapshot, methods=["PATCH"]),
    Route(P + "/snapshots/{snapshot_id}", project.delete_snapshot, methods=["DELETE"]),
    Route(P + "/snapshots/{snapshot_id}/restore", project.restore_snapshot, methods=["POST"]),
    Route(P + "/available_preload_libraries", project.list_available_preload_libraries, methods=["GET"]),
    Route(P + "/operations", project.list_operations, methods=["GET"]),
    Route(P + "/operations/{operation_id}", project.get_operation, methods=["GET"]),
    Route(P + "/branches", branches.list_branches, methods=["GET"]),
    Route(P + "/branches", branches.create_branch, methods=["POST"]),
    # Before `{branch_id}`, which would take "count" for an id.
    Route(P + "/branches/count", branches.count_branches, methods=["GET"]),
    Route(B, branches.get_branch, methods=["GET"]),
    Route(B, branches.update_branch, methods=["PATCH"]),
    Route(B, branches.delete_branch, methods=["DELETE"]),
    Route(B + "/restore", branches.restore_branch, methods=["POST"]),
    Route(B + "/set_as_default", branches.set_default_branch, methods=["POST"]),
    Route(B + "/snapshot", branches.create_snapshot, methods=["POST"]),
    Route(B + "/finalize_restore", branches.finalize_restore, methods=["POST"]),
    Route(B + "/schema", branches.get_schema, methods=["GET"]),
    Route(B + "/compare_schema", branches.get_schema_comparison, methods=["GET"]),
    Route(B + "/endpoints", computes.branch_endpoints, methods=["GET"]),
    Route(B + "/masking_rules", branches.get_masking_rules, methods=["GET"]),
    Route(B + "/backup_schedule", branches.get_backup_schedule, methods=["GET"]),
    Route(B + "/databases", catalog.list_databases, methods=["GET"]),
    Route(B + "/databases", catalog.create_database, methods=["POST"]),
    Route(B + "/databases/{database_name}", catalog.get_database, methods=["GET"]),
    Route(B + "/databases/{database_name}", catalog.update_database, methods=["PATCH"]),
    Route(B + "/databases/{database_name}", catalog.delete_database, methods=["DELETE"]),
    Route(B + "/roles", catalog.list_roles, methods=["GET"]),
    Route(B + "/roles", catalog.create_role, methods=["POST"]),
    Route(B + "/roles/{role_name}", catalog.get_role, methods=["GET"]),
    Route(B + "/roles/{role_name}", catalog.delete_role, methods=["DELETE"]),
    Route(B + "/roles/{role_name}/reveal_password", catalog.reveal_password, methods=["GET"]),
    Route(B + "/roles/{role_name}/reset_password", catalog.reset_password, methods=["POST"]),
    Route(P + "/endpoints", computes.list_endpoints, methods=["GET"]),
    Route(P + "/endpoints", computes.create_endpoint, methods=["POST"]),
    Route(E, computes.get_endpoint, methods=["GET"]),
    Route(E, computes.update_endpoint, methods=["PATCH"]),
    Route(E, computes.delete_endpoint, methods=["DELETE"]),
    Route(E + "/start", computes.start_endpoint, methods=["POST"]),
    Route(E + "/suspend", computes.suspend_endpoint, methods=["POST"]),
    Route(E + "/restart", computes.restart_endpoint, methods=["POST"]),
    Route(P + "/connection_uri", catalog.get_connection_uri, methods=["GET"]),
    Route(PREFIX + "/_local/faults", project.get_faults, methods=["GET"]),
    Route(PREFIX + "/_local/faults", project.put_faults, methods=["PUT"]),
    Route(PREFIX + "/_local/info", project.get_info, methods=["GET"]),
    Route(PREFIX + "/_local/requests", project.get_requests, methods=["GET"]),
]


# ---------------------------------------------------------------------- front door


class NeonFront:
    """Request ids, Bearer auth, activity tracking and fault injection around the routes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        neon: LocalNeon,
        api_key: str,
        faults: FaultInjector,
        journal: RequestJournal | None = None,
    ) -> None:
        self.app = app
        self.neon = neon
        self._key = api_key.encode()
        self.faults = faults
        self.journal = journal or RequestJournal()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ids.request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw_send = send

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(name, request_id.encode()) for name in REQUEST_ID_HEADERS]
                message = {**message, "headers": headers}
            await raw_send(message)

        send_with_id: Send = with_id

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
        with self.neon.answering():
            await self._answer(scope, receive, send_with_id, raw_send, request_id)

    async def _answer(self, scope: Scope, receive: Receive, send_with_id: Send, raw_send: Send,
                      request_id: str) -> None:
        path: str = scope["path"]
        if path.startswith(PREFIX + "/_local/"):
            await self.app(scope, receive, send_with_id)
            return
        rtt = self.neon.latency.rtt
        if rtt:
            send_with_id = _delayed(send_with_id, rtt / 2)
        send_with_id = self._journaled(scope, send_with_id)
        if rtt:
            await asyncio.sleep(rtt / 2)  # the request's way there; _delayed adds the way back
        if not self.faults.config.active:
            await self.app(scope, receive, send_with_id)
            return

        await self._faulty(scope, receive, send_with_id, raw_send, request_id)

    async def _faulty(
        self, scope: Scope, receive: Receive, send: Send, raw_send: Send, request_id: str
    ) -> None:
        """Serve the request through the fault injector: after its extra latency, as is,
        with the connection dropped before or after the work, or with an error answer."""
        config = self.faults.config
        if config.latency:
            await asyncio.sleep(config.latency)
        fault = self.faults.before_request(scope["method"])
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.kind == "drop":
            log.info("fault: dropping %s %s", scope["method"], scope["path"])
            await drop_connection(raw_send, receive)
        elif fault.kind == "drop_after":
            log.info("fault: serving %s %s, then dropping it", scope["method"], scope["path"])

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            await drop_connection(raw_send, receive)
        else:
            await self._fault_response(fault.status, request_id)(scope, receive, send)

    def _journaled(self, scope: Scope, send: Send) -> Send:
        received = time.time()
        client = scope.get("client") or ("", 0)

        async def journaled(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                status = int(message["status"])
                entry = JournalEntry(scope["method"], scope["path"], status, received, time.time(), client[1])
                self.journal.add(entry)

        return journaled

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


def _delayed(send: Send, seconds: float) -> Send:
    """`send` that holds the answer's first message `seconds` (the profile's way back)."""

    async def delayed(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(seconds)
        await send(message)

    return delayed


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


# A branch's preview features (object storage, functions and their credentials), which
# Neon serves in a few regions only. Elsewhere it answers 404 saying the service is not
# available for the region, and clients (neonctl's `status`, `pull`) then go on without
# them; the local region is such a place.
_REGIONAL = re.compile(
    "^" + re.escape(PREFIX) + r"/projects/[^/]+/branches/[^/]+/(buckets|functions|credentials|storage)(/|$)"
)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes (404) and methods (405) answer in Neon's error shape too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "BAD_REQUEST")
    message = "no such API route" if status == 404 else str(getattr(exc, "detail", "error"))
    if status == 404 and _REGIONAL.match(request.url.path):
        message = "platform service not available for this region"
    return error_response(status, code, message, request_id_of(request))


def create_app(neon: LocalNeon, api_key: str, faults: FaultInjector | None = None) -> ASGIApp:
    """The ASGI app. `neon` must be started (and later stopped) by the caller."""
    injector = faults or neon.faults
    inner = Starlette(routes=ROUTES, exception_handlers={HTTPException: _http_error})
    inner.state.neon = neon
    inner.state.faults = injector
    inner.state.journal = RequestJournal()
    return NeonFront(inner, neon=neon, api_key=api_key, faults=injector, journal=inner.state.journal)
