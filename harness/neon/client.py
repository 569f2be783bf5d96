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

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from cathouse_harness.config.settings import DEFAULT_API_HOST
from cathouse_harness.neon.base import items, obj, q
from cathouse_harness.neon.branches import UNSET
from cathouse_harness.neon.create import CreateMixin
from cathouse_harness.neon.models import Project
from cathouse_harness.neon.operations import NeonOperationError
from cathouse_harness.neon.retry import RetryPolicy
from cathouse_harness.neon.transport import Sleep, Transport

__all__ = ["DEFAULT_API_HOST", "UNSET", "NeonClient", "NeonOperationError"]


class NeonClient(CreateMixin):
    """Async client for the subset of Neon API v2 the harness needs.

    `sleep`, `clock` and `rng` exist so tests can run retries and polling without waiting.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_host: str = DEFAULT_API_HOST,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "cathouse-harness/0.1",
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = Transport(
            api_key, api_host=api_host, retry=retry, timeout=timeout, transport=transport,
            user_agent=user_agent, sleep=sleep, clock=clock, rng=rng,
            on_locked=self._wait_for_project,
        )
        self.api_host = self._transport.api_host
        self.retry = self._transport.retry
        self.stats = self._transport.stats
        self._clock = clock
        self._sleep = sleep

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
