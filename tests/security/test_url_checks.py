"""Item 9: the URLs handed out must point at the new branch's own endpoint.

The pooled URL becomes `DATABASE_URL`, so it must be on the new endpoint's pooled host,
not merely differ from the direct one; and no host (`.localhost` ones included) skips
the check. A confused or hostile API answer is a fault nothing real produces on demand,
so the create answer comes from the in-memory fake with one field changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cathouse_harness.branching.lifecycle import create_owned_branch
from cathouse_harness.errors import SafetyError
from cathouse_harness.neon.client import NeonClient, TransportOptions

from tests.neon.fake_api import API_HOST, API_KEY, PROJECT, FakeNeon

Edit = Callable[[dict[str, Any]], None]


class TamperedNeon(FakeNeon):
    """The fake Neon, with each create answer passed through `edit`."""

    def __init__(self, edit: Edit) -> None:
        super().__init__()
        self.edit = edit

    def create(self, body: dict) -> httpx.Response:
        answer = super().create(body)
        data = answer.json()
        self.edit(data)
        endpoint = data["endpoints"][0]
        self.endpoints[endpoint["id"]].update(endpoint)  # later reads agree with the answer
        return httpx.Response(answer.status_code, json=data)


def _other_pooler(data: dict[str, Any]) -> None:
    data["connection_uris"][0]["connection_parameters"]["pooler_host"] = (
        "ep-someone-else-999-pooler.fake.neon.test"
    )


def _localhost_endpoint_direct_elsewhere(data: dict[str, Any]) -> None:
    endpoint = data["endpoints"][0]
    endpoint["host"] = f"{endpoint['id']}.localhost"
    entry = data["connection_uris"][0]
    entry["connection_uri"] = entry["connection_uri"].replace(
        f"{endpoint['id']}.fake.neon.test", "ep-parent-1.fake.neon.test"
    )
    entry["connection_parameters"]["pooler_host"] = f"{endpoint['id']}-pooler.localhost"


def _fork(edit: Edit) -> Any:
    async def fork() -> Any:
        options = TransportOptions(api_host=API_HOST, transport=httpx.MockTransport(TamperedNeon(edit)))
        client = NeonClient(API_KEY, options)
        async with client:
            return await create_owned_branch(
                client, PROJECT, name="harness/url-check/main", parent_id="br-main-000",
                ttl=timedelta(minutes=5), kind="session", run_id="url-check",
                database="cathouse", role="cathouse_owner",
            )

    return asyncio.run(fork())


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_other_pooler, "pooled URL's host ep-someone-else-999-pooler"),
        (_localhost_endpoint_direct_elsewhere, "direct URL's host ep-parent-1"),
    ],
)
def test_urls_off_the_new_endpoint_are_refused(edit: Edit, reason: str) -> None:
    with pytest.raises(SafetyError, match=reason):
        _fork(edit)


def test_an_honest_answer_passes() -> None:
    handle = _fork(lambda data: None)
    assert "-pooler.fake.neon.test" in str(handle.pooled_url)
    assert json.dumps(repr(handle)).count("pw-") == 0
