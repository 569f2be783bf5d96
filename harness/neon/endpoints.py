"""Neon's endpoints (computes): reading them and waiting until one accepts connections."""

from __future__ import annotations

from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.base import ClientBase, items, obj, q
from cathouse_harness.neon.models import Endpoint
from cathouse_harness.neon.operations import POLL
from cathouse_harness.support.polling import wait_until_async


class EndpointsMixin(ClientBase):
    async def list_endpoints(self, project_id: str) -> list[Endpoint]:
        data = await self._transport.get(f"/projects/{q(project_id)}/endpoints")
        return [Endpoint.from_api(e) for e in items(data, "endpoints")]

    async def list_branch_endpoints(self, project_id: str, branch_id: str) -> list[Endpoint]:
        data = await self._transport.get(f"/projects/{q(project_id)}/branches/{q(branch_id)}/endpoints")
        return [Endpoint.from_api(e) for e in items(data, "endpoints")]

    async def get_endpoint(self, project_id: str, endpoint_id: str) -> Endpoint:
        data = await self._transport.get(f"/projects/{q(project_id)}/endpoints/{q(endpoint_id)}")
        return Endpoint.from_api(obj(data, "endpoint"))

    async def wait_for_endpoint(
        self, project_id: str, endpoint_id: str, *, timeout: float = 60
    ) -> Endpoint:
        """Poll until the endpoint is `active` or `idle` (both accept connections)."""
        seen: list[Endpoint] = []

        async def usable() -> bool:
            seen.append(await self.get_endpoint(project_id, endpoint_id))
            return seen[-1].usable

        if await wait_until_async(
            usable, timeout=timeout, backoff=POLL, clock=self._clock, sleep=self._sleep
        ):
            return seen[-1]
        raise NeonAPIError(
            f"endpoint {endpoint_id} still {seen[-1].current_state or 'unknown'}"
            f" after {timeout:g}s",
            status=0,
            code="ENDPOINT_TIMEOUT",
            method="GET",
            path=f"/projects/{project_id}/endpoints/{endpoint_id}",
        )
