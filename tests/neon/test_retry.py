"""Retry decisions: which failures are retried, how long the client waits, when it stops.

Faults come from httpx.MockTransport handlers; waits are read from an injected sleep on
a fake clock, never from wall time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate

import httpx
import pytest
from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.client import NeonClient
from cathouse_harness.neon.retry import RetryPolicy, exception_is_retryable, parse_retry_after
from cathouse_harness.neon.transport import TransportOptions

from .fake_api import API_HOST, API_KEY, PROJECT, FakeClock

PROJECT_JSON = {"project": {"id": PROJECT, "name": "cathouse", "pg_version": 17}}
Step = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=PROJECT_JSON)


def status(code: int, headers: dict[str, str] | None = None) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            code, json={"code": "", "message": f"status {code}"}, headers=headers or {}
        )

    return step


def raises(exc_type: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("connection trouble", request=request)

    return step


class Script:
    """Answers requests with the given steps in order, repeating the last one."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.seen: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        step = self.steps[min(len(self.seen) - 1, len(self.steps) - 1)]
        return step(request)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock) -> Iterator[Callable[..., NeonClient]]:
    clients: list[NeonClient] = []

    def build(handler: Script, **policy: float) -> NeonClient:
        client = NeonClient(API_KEY, TransportOptions(
            api_host=API_HOST,
            retry=RetryPolicy(**policy),  # type: ignore[arg-type]
            transport=httpx.MockTransport(handler),
            sleep=clock.sleep,
            clock=clock,
            rng=random.Random(3),
        ))
        clients.append(client)
        return client

    yield build


async def test_429_waits_for_retry_after_seconds(make, clock):
    script = Script(status(429, {"Retry-After": "7"}), ok)
    async with make(script) as client:
        project = await client.get_project(PROJECT)
    assert project.name == "cathouse"
    assert clock.sleeps == [7.0]
    assert client.stats.calls == 2 and client.stats.retries == 1


async def test_429_retry_after_as_http_date(make, clock):
    script = Script(status(429, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}), ok)
    async with make(script) as client:
        await client.get_project(PROJECT)
    (delay,) = clock.sleeps
    # HTTP dates have one-second resolution
    assert 28.0 <= delay <= 30.0


async def test_retry_after_is_capped_by_the_deadline(make, clock):
    script = Script(status(429, {"Retry-After": "1000"}))
    async with make(script, deadline=60.0) as client:
        with pytest.raises(NeonAPIError) as caught:
            await client.get_project(PROJECT)
    assert clock.sleeps == [60.0]
    assert caught.value.status == 429
    assert "gave up after 2 attempts" in str(caught.value)


@pytest.mark.parametrize("code", [423, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(make, clock, code):
    script = Script(status(code), status(code), ok)
    async with make(script) as client:
        await client.get_project(PROJECT)
    assert len(script.seen) == 3
    assert len(clock.sleeps) == 2
    assert client.stats.snapshot()["statuses"] == {str(code): 2, "200": 1}
    assert client.stats.failures == 2 and client.stats.retries == 2


@pytest.mark.parametrize(
    "exc_type",
    [httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError, httpx.ReadTimeout],
)
async def test_transport_failures_are_retried(make, exc_type):
    script = Script(raises(exc_type), ok)
    async with make(script) as client:
        await client.get_project(PROJECT)
    assert len(script.seen) == 2
    assert client.stats.snapshot()["statuses"] == {"no answer": 1, "200": 1}


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422])
async def test_other_client_errors_are_not_retried(make, clock, code):
    script = Script(status(code), ok)
    async with make(script) as client:
        with pytest.raises(NeonAPIError) as caught:
            await client.get_project(PROJECT)
    assert caught.value.status == code
    assert len(script.seen) == 1 and clock.sleeps == []
    assert client.stats.calls == 1 and client.stats.retries == 0
    assert "gave up" not in str(caught.value)


async def test_401_hints_at_the_key(make):
    async with make(Script(status(401))) as client:
        with pytest.raises(NeonAPIError) as caught:
            await client.check_auth()
    assert "check NEON_API_KEY" in str(caught.value)


async def test_max_attempts_counts_every_attempt(make, clock):
    script = Script(status(503))
    async with make(script, max_attempts=3) as client:
        with pytest.raises(NeonAPIError) as caught:
            await client.get_project(PROJECT)
    assert len(script.seen) == 3 and len(clock.sleeps) == 2
    assert caught.value.status == 503
    assert "gave up after 3 attempts" in str(caught.value)
    assert client.stats.snapshot()["calls"] == 3
    assert client.stats.snapshot()["routes"] == {"GET /projects/{project_id}": 3}


async def test_deadline_bounds_all_waiting(make, clock):
    script = Script(raises(httpx.RemoteProtocolError))
    start = clock.now
    async with make(script, max_attempts=1000, base_delay=0.4, jitter=False, deadline=3.0) as c:
        with pytest.raises(NeonAPIError) as caught:
            await c.get_project(PROJECT)
    assert clock.now - start <= 3.0 + 1e-9
    assert sum(clock.sleeps) == pytest.approx(3.0)
    assert len(script.seen) < 1000
    assert caught.value.status == 0
    assert f"gave up after {len(script.seen)} attempts" in str(caught.value)
    assert "RemoteProtocolError" in str(caught.value)


async def test_backoff_grows_exponentially_up_to_the_cap(make, clock):
    script = Script(status(503))
    async with make(script, max_attempts=7, base_delay=0.5, max_delay=3.0, jitter=False) as c:
        with pytest.raises(NeonAPIError):
            await c.get_project(PROJECT)
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_stays_below_the_ceiling():
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0)
    rng = random.Random(11)
    draws = [policy.backoff(attempt, rng) for attempt in range(1, 12) for _ in range(50)]
    ceilings = [min(5.0, 0.1 * 2 ** (a - 1)) for a in range(1, 12) for _ in range(50)]
    assert all(0 <= d <= c for d, c in zip(draws, ceilings, strict=True))
    # jitter actually spreads the waits out
    assert len({round(d, 6) for d in draws}) > 500


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 12, usegmt=True), now=now) == pytest.approx(12.0)
    assert parse_retry_after(formatdate(now - 12, usegmt=True), now=now) == 0.0


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline=0)


async def test_create_after_a_rejection_is_resent_without_lookup(make):
    created = {
        "branch": {"id": "br-new-1", "name": "b", "project_id": PROJECT},
        "operations": [],
    }
    script = Script(
        status(429, {"Retry-After": "0"}),
        status(423),
        lambda request: httpx.Response(201, json=created),
    )
    async with make(script) as client:
        result = await client.create_branch(PROJECT, name="b", endpoint=False, wait=False)
    assert result.branch.id == "br-new-1" and not result.recovered
    # 429 and 423 mean the server refused before acting: no lookup was needed (the 423
    # only had the client look for running operations, and it found none)
    assert [m for m, _ in script.seen if m == "POST"] == ["POST", "POST", "POST"]
    assert [path for m, path in script.seen if m == "GET"] == [f"/api/v2/projects/{PROJECT}/operations"]


async def test_a_locked_mutation_waits_for_the_running_operation_then_goes_again(make, clock):
    running = {"id": "op-1", "project_id": PROJECT, "action": "create_branch", "status": "running"}
    created = {"branch": {"id": "br-new-1", "name": "b", "project_id": PROJECT}, "operations": []}
    script = Script(
        status(423),
        lambda request: httpx.Response(200, json={"operations": [running]}),
        lambda request: httpx.Response(200, json={"operation": {**running, "status": "finished"}}),
        lambda request: httpx.Response(201, json=created),
    )
    async with make(script) as client:
        result = await client.create_branch(PROJECT, name="b", endpoint=False, wait=False)
    assert result.branch.id == "br-new-1"
    assert [m for m, _ in script.seen] == ["POST", "GET", "GET", "POST"]
    assert script.seen[2][1].endswith("/operations/op-1")
    # No blind backoff: the next attempt went out as the lock's operation ended.
    assert clock.sleeps == [] and client.stats.lock_waits == 1


async def test_create_after_a_5xx_looks_up_before_resending(make):
    listing: dict[str, object] = {"branches": [], "annotations": {}}
    created = {"branch": {"id": "br-new-1", "name": "b", "project_id": PROJECT}}
    script = Script(
        status(502),
        lambda request: httpx.Response(200, json=listing),
        lambda request: httpx.Response(201, json=created),
    )
    async with make(script) as client:
        result = await client.create_branch(PROJECT, name="b", endpoint=False, wait=False)
    assert result.branch.id == "br-new-1"
    assert [m for m, _ in script.seen] == ["POST", "GET", "POST"]
    assert script.seen[1][1].endswith(f"/projects/{PROJECT}/branches")


def _refused() -> httpx.ConnectError:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise httpx.ConnectError("All connection attempts failed") from cause
    except httpx.ConnectError as exc:
        return exc


@pytest.mark.parametrize(
    ("api_host", "retried"),
    [
        ("http://127.0.0.1:9/api/v2", False),
        ("http://localhost:9/api/v2", False),
        ("http://[::1]:9/api/v2", False),
        ("https://console.neon.tech/api/v2", True),
    ],
)
def test_a_refused_connection_is_retried_only_on_a_remote_host(api_host, retried):
    """Nothing listening on a port of this machine does not change within a retry's wait;
    a remote host's refusal can be a balancer changing hands."""
    assert exception_is_retryable(_refused(), api_host) is retried
    assert exception_is_retryable(httpx.ConnectError("timed out"), api_host) is True
