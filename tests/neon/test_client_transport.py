"""The client against faults no real server produces on demand: answers lost after the
server acted, dropped connections, a storm of transient errors; plus operation waiting
and secrecy of the key and passwords."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cathouse_harness.errors import ConfigError, NeonAPIError
from cathouse_harness.neon.client import NeonClient, NeonOperationError
from cathouse_harness.neon.models import Operation
from cathouse_harness.neon.retry import RetryPolicy
from cathouse_harness.neon.transport import TransportOptions

from .fake_api import API_HOST, API_KEY, PASSWORD, PROJECT, FakeClock, FakeNeon, Faulty

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, clock: FakeClock, **policy: float) -> NeonClient:
    return NeonClient(API_KEY, TransportOptions(
        api_host=API_HOST,
        retry=RetryPolicy(**policy),  # type: ignore[arg-type]
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(5),
    ))


class DropFirstCreate:
    """The first create reaches the server, which records the branch; then the
    connection drops before the answer arrives."""

    def __init__(self, server: FakeNeon, exc: type[httpx.TransportError]) -> None:
        self.server = server
        self.exc = exc
        self.dropped = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.server(request)
        creating = request.method == "POST" and request.url.path.endswith("/branches")
        if creating and not self.dropped:
            self.dropped = True
            raise self.exc("Server disconnected without sending a response.", request=request)
        return answer


@pytest.mark.parametrize("exc", [httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ReadError])
async def test_create_whose_answer_is_lost_makes_exactly_one_branch(exc):
    server = FakeNeon()
    handler = DropFirstCreate(server, exc)
    expires = datetime.now(UTC) + timedelta(hours=1)
    async with client_for(handler, FakeClock()) as client:
        created = await client.create_branch(
            PROJECT,
            name="harness/run-1/gw0",
            parent_id="br-main-000",
            expires_at=expires,
            annotation={"cathouse-harness": "run-1"},
        )
    assert handler.dropped
    assert server.names() == ["harness/run-1/gw0", "main"]
    (bid,) = [b for b in server.branches if server.branches[b]["name"] == "harness/run-1/gw0"]
    assert created.recovered is True
    assert created.branch.id == bid and created.branch.ready
    assert dict(created.branch.annotation) == {"cathouse-harness": "run-1"}
    assert [p for m, p in server.requests if m == "POST"] == [f"/projects/{PROJECT}/branches"]
    # the recovered result carries what a create answer would have
    (endpoint,) = created.endpoints
    assert endpoint.branch_id == bid and endpoint.usable
    assert [d.name for d in created.databases] == ["cathouse"]
    (conn,) = created.connection_uris
    assert conn.password is not None and conn.password.reveal() == PASSWORD
    assert conn.host == f"{endpoint.id}.fake.neon.test"
    assert conn.pooler_host == f"{endpoint.id}-pooler.fake.neon.test"
    assert client.stats.recovered_creates == 1


async def test_create_sends_neon_body_and_waits_until_usable():
    server = FakeNeon(op_polls=3)
    bodies: list[bytes] = []

    def spy(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(request.content)
        return server(request)

    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with client_for(spy, FakeClock()) as client:
        created = await client.create_branch(
            PROJECT,
            name="dev/alice",
            parent_id="br-main-000",
            expires_at=expires,
            annotation={"cathouse-harness": "dev"},
            init_source="schema-only",
        )
    (body,) = [json.loads(b) for b in bodies]
    assert body == {
        "branch": {
            "name": "dev/alice",
            "parent_id": "br-main-000",
            "expires_at": "2030-01-02T03:04:05Z",
            "init_source": "schema-only",
        },
        "endpoints": [{"type": "read_write"}],
        "annotation_value": {"cathouse-harness": "dev"},
    }
    assert all(op.done for op in created.operations)
    assert created.branch.current_state == "ready"
    assert all(e.usable for e in created.endpoints)
    assert not created.recovered


@pytest.mark.parametrize("seed", [20240601, 7, 99])
async def test_faulty_server_never_leaks_or_doubles_branches(seed):
    server = FakeNeon()
    faulty = Faulty(server, rate=0.3, seed=seed)
    clock = FakeClock()
    ids: list[str] = []
    async with client_for(faulty, clock) as client:
        for i in range(50):
            name = f"harness/storm/{i}"
            created = await client.create_branch(
                PROJECT, name=name, annotation={"cathouse-harness": "storm"}
            )
            assert server.names().count(name) == 1, f"cycle {i}: {server.names()}"
            assert created.branch.name == name
            ids.append(created.branch.id)
            await client.delete_branch(PROJECT, created.branch.id)
            assert created.branch.id not in server.branches
    assert server.names() == ["main"]  # 0 leaked
    assert len(set(ids)) == 50  # 0 duplicated
    # the storm really hit every kind of fault, creates included
    assert set(faulty.faults) == set(Faulty.KINDS)
    stats = client.stats.snapshot()
    assert stats["retries"] > 0 and stats["failures"] > 0
    assert stats["recovered_creates"] > 0
    assert stats["calls"] == len(server.requests) + faulty.faults.count("refused") + sum(
        1 for f in faulty.faults if f in ("429", "423", "503")
    )


async def test_delete_is_idempotent_and_reports_what_happened():
    server = FakeNeon()
    async with client_for(server, FakeClock()) as client:
        created = await client.create_branch(PROJECT, name="to-delete", endpoint=False)
        assert await client.delete_branch(PROJECT, created.branch.id) is True
        assert await client.delete_branch(PROJECT, created.branch.id) is False
        with pytest.raises(NeonAPIError) as caught:
            await client.delete_branch(PROJECT, created.branch.id, missing_ok=False)
    assert caught.value.status == 404


async def test_delete_whose_answer_is_lost_still_counts_as_deleted():
    server = FakeNeon()
    lost = {"done": False}

    def handler(request: httpx.Request) -> httpx.Response:
        answer = server(request)
        if request.method == "DELETE" and not lost["done"]:
            lost["done"] = True
            raise httpx.RemoteProtocolError("dropped", request=request)
        return answer

    async with client_for(handler, FakeClock()) as client:
        created = await client.create_branch(PROJECT, name="x", endpoint=False)
        assert await client.delete_branch(PROJECT, created.branch.id) is True
    assert server.names() == ["main"]


async def test_wait_for_operations_polls_running_until_finished():
    server = FakeNeon(op_polls=4)
    clock = FakeClock()
    async with client_for(server, clock) as client:
        created = await client.create_branch(PROJECT, name="w", wait=False)
        assert all(op.pending for op in created.operations)
        ops = await client.wait_for_operations(
            PROJECT, [created.operations[0], created.operations[1].id]
        )
    assert [op.id for op in ops] == [op.id for op in created.operations]
    assert all(op.status == "finished" for op in ops)
    # polling starts short and grows
    from cathouse_harness.neon.operations import POLL

    assert clock.sleeps[0] == pytest.approx(POLL.first)
    assert clock.sleeps == sorted(clock.sleeps)


async def test_wait_for_operations_raises_on_failed_operation():
    server = FakeNeon(op_polls=2, fail_action="start_compute")
    async with client_for(server, FakeClock()) as client:
        with pytest.raises(NeonAPIError) as caught:
            await client.create_branch(PROJECT, name="doomed")
    err = caught.value
    assert isinstance(err, NeonOperationError)
    assert err.operation.action == "start_compute"
    text = str(err)
    assert err.operation.id in text and "start_compute" in text
    assert str(err.operation.branch_id) in text and "compute failed to start" in text
    assert not err.transient


async def test_a_failed_branch_operation_is_named_not_the_cancelled_compute_start():
    server = FakeNeon(op_polls=2, fail_action="create_branch")
    async with client_for(server, FakeClock()) as client:
        with pytest.raises(NeonOperationError) as caught:
            await client.create_branch(PROJECT, name="doomed")
    assert caught.value.operation.action == "create_branch"
    assert "compute failed to start" in str(caught.value)


async def test_a_create_waits_on_its_last_operation_only():
    """Operations run in order, so the create polls only the last one; once it finished
    the branch is ready and the endpoint running, and neither costs a request."""
    server = FakeNeon(op_polls=3)
    async with client_for(server, FakeClock()) as client:
        created = await client.create_branch(PROJECT, name="quick")
    assert created.branch.current_state == "ready"
    assert [op.status for op in created.operations] == ["finished", "finished"]
    assert all(e.usable for e in created.endpoints)
    last_op = created.operations[-1].id
    branch = created.branch.id
    seen = [(m, p.rsplit("/", 2)[-2:]) for m, p in server.requests]
    assert seen == [("POST", [PROJECT, "branches"])] + [("GET", ["operations", last_op])] * 3
    assert server._branch_view(branch)["current_state"] == "ready"


async def test_wait_for_operations_times_out_by_the_clock():
    server = FakeNeon(op_polls=10_000)
    async with client_for(server, FakeClock()) as client:
        created = await client.create_branch(PROJECT, name="slow", wait=False)
        with pytest.raises(NeonOperationError) as caught:
            await client.wait_for_operations(PROJECT, created.operations, timeout=2.0)
    assert caught.value.timed_out and "after 2s" in str(caught.value)


async def test_an_already_failed_operation_raises_without_polling():
    server = FakeNeon()
    op = Operation.from_api(
        {"id": "op-x", "project_id": PROJECT, "branch_id": "br-1", "action": "a", "status": "error"}
    )
    async with client_for(server, FakeClock()) as client:
        with pytest.raises(NeonOperationError):
            await client.wait_for_operations(PROJECT, [op])
    assert server.requests == []


async def test_branch_lookups_and_updates():
    server = FakeNeon()
    async with client_for(server, FakeClock()) as client:
        created = await client.create_branch(
            PROJECT, name="feature", annotation={"cathouse-harness": "x"}
        )
        bid = created.branch.id
        assert (await client.resolve_branch(PROJECT, bid)).name == "feature"
        found = await client.resolve_branch(PROJECT, "feature")
        assert found.id == bid and dict(found.annotation) == {"cathouse-harness": "x"}
        assert await client.find_branch(PROJECT, "feat") is None  # exact names only
        with pytest.raises(NeonAPIError) as caught:
            await client.resolve_branch(PROJECT, "nope")
        assert caught.value.status == 404

        later = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
        updated = await client.update_branch(PROJECT, bid, expires_at=later)
        assert updated.expires_at == later
        cleared = await client.update_branch(PROJECT, bid, expires_at=None)
        assert cleared.expires_at is None
        renamed = await client.update_branch(PROJECT, bid, name="feature-2")
        assert renamed.name == "feature-2" and renamed.expires_at is None

        restored = await client.restore_branch(PROJECT, bid, source_branch_id="br-main-000")
        assert restored.id == bid and restored.ready
        password = await client.reveal_password(PROJECT, bid, "cathouse_owner")
        assert password.reveal() == PASSWORD
        pooled = await client.connection_uri(
            PROJECT,
            branch_id=bid,
            database_name="cathouse",
            role_name="cathouse_owner",
            pooled=True,
        )
        assert "-pooler." in pooled.reveal()
    patches = [p for m, p in server.requests if m == "PATCH"]
    assert len(patches) == 3


async def test_options_reach_the_transport_and_hold_no_key():
    seen: list[tuple[str, str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["User-Agent"], request.headers["Authorization"]))
        return httpx.Response(200, json={"projects": []})

    options = TransportOptions(
        api_host=API_HOST + "/", user_agent="options-test/1", transport=httpx.MockTransport(handler)
    )
    async with NeonClient(API_KEY, options) as client:
        assert await client.list_projects() == []
    assert seen == [(f"{API_HOST}/projects?limit=400", "options-test/1", f"Bearer {API_KEY}")]
    assert API_KEY not in repr(options) and API_KEY not in repr(client)


async def test_an_empty_key_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        NeonClient("")
    assert "NEON_API_KEY" in str(caught.value)


async def test_secrets_never_surface(caplog):
    caplog.set_level(logging.DEBUG, logger="cathouse_harness")
    server = FakeNeon()

    def leaky(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        auth = request.headers["authorization"]
        if path.endswith("/auth"):
            # a server that echoes the key it refused
            return httpx.Response(401, json={"message": f"bad key {API_KEY}"})
        if path.endswith("/endpoints"):
            # a transport error whose text carries the Authorization header
            raise httpx.RemoteProtocolError(f"peer closed; sent {auth}", request=request)
        if path.endswith("/databases"):
            return httpx.Response(500, text=f"crash dumping postgresql://u:{PASSWORD}@h/db")
        return server(request)

    errors: list[str] = []
    async with client_for(leaky, FakeClock(), max_attempts=2) as client:
        created = await client.create_branch(PROJECT, name="secret-test")
        for call in (
            client.check_auth(),
            client.list_endpoints(PROJECT),
            client.list_databases(PROJECT, created.branch.id),
        ):
            with pytest.raises(NeonAPIError) as caught:
                await call
            errors.append(str(caught.value))
            errors.append(repr(caught.value))
            assert caught.value.__cause__ is None and caught.value.__context__ is None
        texts = errors + [repr(client), repr(created), str(created), caplog.text]
        texts += [repr(c) for c in created.connection_uris] + [repr(r) for r in created.roles]
    for text in texts:
        assert API_KEY not in text
        assert PASSWORD not in text
    assert "check NEON_API_KEY" in errors[0]
    assert "RemoteProtocolError" in errors[2]
    assert "GET /projects" in caplog.text  # the debug lines were there to check
