"""An in-memory Neon API for httpx.MockTransport, with fault injection.

Used only where nothing real can produce the situation: answers lost after the server
acted, connections dropped mid-request, 429/423/5xx storms. It keeps just enough state
(branches, endpoints, operations) for the client's wire shapes to be checked; the real
behaviour is tested against the local server elsewhere.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

PROJECT = "proj-fake-123"
PASSWORD = "pw-SECRET-5b7e1c9a"
API_KEY = "neon-test-key-SECRET-9f8e7d6c"
PREFIX = "/api/v2"
API_HOST = "https://neon.test" + PREFIX

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    """A monotonic clock that only moves when the client sleeps; records each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )


def _error(status: int, code: str, message: str) -> httpx.Response:
    return _json(status, {"code": code, "message": message, "request_id": f"req-{status}"})


@dataclass
class FakeNeon:
    """Neon's branch API over dicts. Operations finish after `op_polls` polls each."""

    op_polls: int = 1
    fail_action: str | None = None
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.branches["br-main-000"] = self._branch_obj("br-main-000", "main", None, True)
        self.branches["br-main-000"]["current_state"] = "ready"

    # ---- state helpers -----------------------------------------------------------

    def _next(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def _branch_obj(self, bid: str, name: str, parent: str | None, default: bool) -> dict:
        return {
            "id": bid,
            "project_id": PROJECT,
            "parent_id": parent,
            "name": name,
            "parent_lsn": "0/1E887C8" if parent else None,
            "current_state": "init",
            "pending_state": None,
            "default": default,
            "protected": False,
            "created_at": _now(),
            "updated_at": _now(),
            "creation_source": "console",
        }

    def _op(self, action: str, branch_id: str, endpoint_id: str | None = None) -> dict:
        op: dict[str, Any] = {
            "id": self._next("op"),
            "project_id": PROJECT,
            "branch_id": branch_id,
            "endpoint_id": endpoint_id,
            "action": action,
            "status": "running",
            "failures_count": 0,
            "created_at": "2025-01-01T00:00:00Z",
        }
        self.operations[op["id"]] = op
        self.polls[op["id"]] = 0
        return op

    def _pending(self, branch_id: str) -> bool:
        return any(
            o["branch_id"] == branch_id and o["status"] == "running"
            for o in self.operations.values()
        )

    def _branch_view(self, bid: str) -> dict:
        b = dict(self.branches[bid])
        if b["current_state"] == "init" and not self._pending(bid):
            b["current_state"] = "ready"
        return b

    def _endpoint_view(self, eid: str) -> dict:
        e = dict(self.endpoints[eid])
        e["current_state"] = "init" if self._pending(e["branch_id"]) else "active"
        return e

    def _uri(self, eid: str, pooled: bool) -> str:
        host = f"{eid}{'-pooler' if pooled else ''}.fake.neon.test"
        return f"postgresql://cathouse_owner:{PASSWORD}@{host}/cathouse?sslmode=require"

    def names(self) -> list[str]:
        return sorted(b["name"] for b in self.branches.values())

    # ---- actions -----------------------------------------------------------------

    def create(self, body: dict) -> httpx.Response:
        spec = body.get("branch") or {}
        bid = self._next("br")
        branch = self._branch_obj(bid, spec["name"], spec.get("parent_id") or "br-main-000", False)
        branch["expires_at"] = spec.get("expires_at")
        self.branches[bid] = branch
        if body.get("annotation_value"):
            self.annotations[bid] = dict(body["annotation_value"])
        ops = [self._op("create_branch", bid)]
        endpoints = []
        for _ in body.get("endpoints") or []:
            eid = self._next("ep")
            self.endpoints[eid] = {
                "id": eid,
                "branch_id": bid,
                "project_id": PROJECT,
                "type": "read_write",
                "host": f"{eid}.fake.neon.test",
                "current_state": "init",
                "pending_state": "active",
                "pooler_enabled": False,
            }
            endpoints.append(self.endpoints[eid])
            ops.append(self._op("start_compute", bid, eid))
        if self.fail_action:
            for op in ops:
                if op["action"] == self.fail_action:
                    op["fail"] = True
        uris = [
            {
                "connection_uri": self._uri(e["id"], False),
                "connection_parameters": {
                    "database": "cathouse",
                    "password": PASSWORD,
                    "role": "cathouse_owner",
                    "host": f"{e['id']}.fake.neon.test",
                    "pooler_host": f"{e['id']}-pooler.fake.neon.test",
                },
            }
            for e in endpoints
        ]
        return _json(
            201,
            {
                "branch": branch,
                "endpoints": endpoints,
                "operations": ops,
                "roles": [
                    {
                        "branch_id": bid,
                        "name": "cathouse_owner",
                        "password": PASSWORD,
                        "protected": False,
                    }
                ],
                "databases": [
                    {"id": 1, "branch_id": bid, "name": "cathouse", "owner_name": "cathouse_owner"}
                ],
                "connection_uris": uris,
            },
        )

    def delete(self, bid: str) -> httpx.Response:
        if bid not in self.branches:
            return _error(404, "", "branch not found")
        branch = self.branches.pop(bid)
        self.annotations.pop(bid, None)
        for eid in [e for e, ep in self.endpoints.items() if ep["branch_id"] == bid]:
            del self.endpoints[eid]
        return _json(200, {"branch": branch, "operations": [self._op("delete_timeline", bid)]})

    def get_operation(self, op_id: str) -> httpx.Response:
        op = self.operations.get(op_id)
        if op is None:
            return _error(404, "", "operation not found")
        self.polls[op_id] += 1
        if op["status"] == "running" and self.polls[op_id] >= self.op_polls:
            # As on Neon, a branch's operations run in order: one cannot end before
            # those started ahead of it; after a failure the rest are cancelled.
            ahead_failed = False
            for earlier in self.operations.values():
                if earlier is op:
                    break
                if earlier["branch_id"] != op["branch_id"]:
                    continue
                if earlier["status"] == "running":
                    self._settle(earlier)
                ahead_failed |= earlier["status"] == "failed"
            if ahead_failed:
                op["status"], op["error"] = "cancelled", "an earlier operation failed"
            else:
                self._settle(op)
        return _json(200, {"operation": {k: v for k, v in op.items() if k != "fail"}})

    @staticmethod
    def _settle(op: dict) -> None:
        op["status"] = "failed" if op.get("fail") else "finished"
        if op.get("fail"):
            op["error"] = "compute failed to start"

    # ---- routing -----------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(PREFIX)
        self.requests.append((request.method, path))
        parts = path.strip("/").split("/")
        method = request.method
        if parts == ["auth"]:
            return _json(200, {"account_id": "acct-1", "auth_method": "api_key_user"})
        if parts[:2] != ["projects", PROJECT]:
            return _error(404, "", "project not found")
        rest = parts[2:]
        body = json.loads(request.content) if request.content else {}
        if rest == ["branches"] and method == "GET":
            search = request.url.params.get("search")
            listed = [
                self._branch_view(b)
                for b in self.branches
                if not search or search in self.branches[b]["name"]
            ]
            return _json(
                200,
                {
                    "branches": listed,
                    "annotations": {
                        bid: {"object": {"type": "console/branch", "id": bid}, "value": value}
                        for bid, value in self.annotations.items()
                    },
                },
            )
        if rest == ["branches"] and method == "POST":
            return self.create(body)
        if len(rest) >= 2 and rest[0] == "branches":
            bid = rest[1]
            if bid not in self.branches:
                return _error(404, "", f"branch {bid} not found")
            tail = rest[2:]
            if not tail and method == "GET":
                return _json(200, {"branch": self._branch_view(bid)})
            if not tail and method == "DELETE":
                return self.delete(bid)
            if not tail and method == "PATCH":
                self.branches[bid].update(body.get("branch") or {})
                return _json(200, {"branch": self._branch_view(bid), "operations": []})
            if tail == ["endpoints"]:
                return _json(
                    200,
                    {
                        "endpoints": [
                            self._endpoint_view(e)
                            for e, ep in self.endpoints.items()
                            if ep["branch_id"] == bid
                        ]
                    },
                )
            if tail == ["roles"]:
                return _json(
                    200,
                    {"roles": [{"branch_id": bid, "name": "cathouse_owner", "protected": False}]},
                )
            if tail == ["databases"]:
                return _json(
                    200,
                    {
                        "databases": [
                            {
                                "id": 1,
                                "branch_id": bid,
                                "name": "cathouse",
                                "owner_name": "cathouse_owner",
                            }
                        ]
                    },
                )
            if len(tail) == 3 and tail[0] == "roles" and tail[2] == "reveal_password":
                return _json(200, {"password": PASSWORD})
            if tail == ["restore"] and method == "POST":
                return _json(
                    200,
                    {
                        "branch": self._branch_view(bid),
                        "operations": [self._op("restore_branch", bid)],
                    },
                )
        if rest == ["endpoints"]:
            return _json(200, {"endpoints": [self._endpoint_view(e) for e in self.endpoints]})
        if len(rest) == 2 and rest[0] == "endpoints":
            if rest[1] not in self.endpoints:
                return _error(404, "", "endpoint not found")
            return _json(200, {"endpoint": self._endpoint_view(rest[1])})
        if rest == ["operations"]:
            return _json(
                200,
                {
                    "operations": [
                        {k: v for k, v in o.items() if k != "fail"}
                        for o in reversed(self.operations.values())
                    ]
                },
            )
        if len(rest) == 2 and rest[0] == "operations":
            return self.get_operation(rest[1])
        if rest == ["connection_uri"]:
            eid = request.url.params.get("endpoint_id") or next(
                e
                for e, ep in self.endpoints.items()
                if ep["branch_id"] == request.url.params["branch_id"]
            )
            return _json(200, {"uri": self._uri(eid, request.url.params.get("pooled") == "true")})
        return _error(404, "", f"no route {method} {path}")


@dataclass
class Faulty:
    """Wraps a handler; a seeded share of requests fail in one of Neon's transient ways.

    Some faults strike before the server acts (429, 423, 503, a refused connection),
    others after (500, a dropped connection, a read timeout): those are the ones that
    make a blind re-send of a create double the branch.
    """

    inner: Handler
    rate: float = 0.3
    seed: int = 7
    faults: list[str] = field(default_factory=list)

    KINDS = ("429", "423", "503", "refused", "500-after", "drop-after", "timeout-after")

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self._rng.random() >= self.rate:
            return self.inner(request)
        kind = self._rng.choice(self.KINDS)
        self.faults.append(kind)
        if kind == "429":
            return _json(429, {"code": "", "message": "rate limited"}, {"Retry-After": "1"})
        if kind == "423":
            return _error(423, "", "project already has running conflicting operations")
        if kind == "503":
            return _error(503, "", "service unavailable")
        if kind == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        self.inner(request)  # the server acts, then the answer is lost
        if kind == "500-after":
            return _error(500, "", "internal error")
        if kind == "drop-after":
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        raise httpx.ReadTimeout("timed out", request=request)
