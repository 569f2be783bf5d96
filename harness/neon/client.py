"""The async Neon API v2 client the whole harness uses, for real Neon and the local server.

One `NeonClient` holds one `Transport` (transport.py: httpx, retries within one deadline,
every other answer a `NeonAPIError`) and speaks the API's resources over it, one module
per resource: `operations`, `branches`, `endpoints`, `roles` (roles, databases,
connection URIs) and `create` (branch create, the one request that is not idempotent).
This module adds the account and project calls and wires the transport's 423 handling
to the operation waiting.

Secrets: the API key and every password or connection URI received are registered with
`cathouse_harness.support.redact`, exceptions are built from scrubbed text and never chain httpx errors
(which hold the request and its Authorization header).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cathouse_harness.config.settings import DEFAULT_API_HOST
from cathouse_harness.neon.base import items, obj, q
from cathouse_harness.neon.branches import UNSET
from cathouse_harness.neon.create import CreateMixin
from cathouse_harness.neon.models import Project
from cathouse_harness.neon.operations import NeonOperationError
from cathouse_harness.neon.transport import Transport, TransportOptions

__all__ = ["DEFAULT_API_HOST", "UNSET", "NeonClient", "NeonOperationError", "TransportOptions"]


class NeonClient(CreateMixin):
    """Async client for the subset of Neon API v2 the harness needs.

    `options` (host, retries, timeout, and the clock and sleep tests replace) go to its
    `Transport`; the client waits on Neon's operations with the same clock and sleep.
    """

    def __init__(self, api_key: str, options: TransportOptions | None = None) -> None:
        options = options or TransportOptions()
        self._transport = Transport(api_key, options, on_locked=self._wait_for_project)
        self.api_host = self._transport.api_host
        self.retry = self._transport.retry
        self.stats = self._transport.stats
        self._clock = options.clock
        self._sleep = options.sleep

    def __repr__(self) -> str:
        return f"NeonClient(api_host={self.api_host!r}, api_key='***')"

    async def __aenter__(self) -> NeonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def check_auth(self) -> dict[str, Any]:
        """`GET /auth`: proves the key works; Neon answers who it belongs to."""
        data = await self._transport.get("/auth")
        return dict(data) if isinstance(data, Mapping) else {}

    async def list_projects(self) -> list[Project]:
        data = await self._transport.get("/projects", params={"limit": "400"})
        return [Project.from_api(p) for p in items(data, "projects")]

    async def get_project(self, project_id: str) -> Project:
        data = await self._transport.get(f"/projects/{q(project_id)}")
        return Project.from_api(obj(data, "project"))
