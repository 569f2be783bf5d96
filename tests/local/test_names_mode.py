"""#15 part 1, names mode: `host` is `<endpoint-id>.local.localhost` as Neon's hosts are
shaped, and a URL built from it, with `-pooler` inserted after the endpoint id for the
pooled one, reaches the branch through one router on 5432 that routes by TLS SNI.

`*.localhost` does not resolve on every machine (Debian's nsswitch `files dns`), so most
tests force names mode and put the router on a loopback address of its own; libpq's
`hostaddr` dials it while `host` is the name it sends as SNI and verifies against the
certificate (verify-full with the home's CA). Where names resolve (CI: `.ci/run` adds
nss-myhostname), the last test connects by the names alone, as Neon's clients do.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.data.hosts import free_loopback_address
from cathouse_harness.local.data.names import HOSTS_VAR, ROUTER_VAR, host_mode, names_resolve, route_of
from cathouse_harness.support.polling import Backoff, wait_until

from tests._pgbouncer import pooled_backends
from tests.local._server import (
    api_client,
    connection_uri,
    create_ready_branch,
    delete_branch,
    start_test_server,
    unique,
)


def _free_router_address() -> str:
    address = free_loopback_address()
    if address is None:
        pytest.skip("no loopback address beyond 127.0.0.1 can listen on 5432 here")
    return address


def _endpoint_of(made: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A created branch's endpoint, its connection parameters and the CA its URLs name."""
    [endpoint] = made["endpoints"]
    entry = made["connection_uris"][0]
    [ca] = parse_qs(urlsplit(entry["connection_uri"]).query)["sslrootcert"]
    return endpoint, entry["connection_parameters"], ca


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str, str]]:
    router = _free_router_address()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOSTS_VAR, "names")
        patch.setenv(ROUTER_VAR, router)
        with start_test_server(tmp_path_factory.mktemp("names-home")) as info, api_client(info) as client:
            yield client, info.project_id, router


def _connect(host: str, router: str, params: dict[str, Any], ca: str, **extra: str) -> psycopg.Connection:
    """libpq dials `router` and sends `host` as the server name (none for an address)."""
    options: dict[str, Any] = {"sslmode": "verify-full", **extra}
    return psycopg.connect(
        host=host, hostaddr=router, port=5432, user=params["role"], password=params["password"],
        dbname=params["database"], sslrootcert=ca, autocommit=True, connect_timeout=10, **options,
    )


def _pids(host: str, router: str, params: dict[str, Any], ca: str, times: int) -> set[int]:
    found = set()
    for _ in range(times):
        with _connect(host, router, params, ca) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            found.add(int(row[0]))
    return found


def test_urls_built_from_a_named_host_reach_the_branch_and_its_pooler(
    named: tuple[httpx.Client, str, str],
) -> None:
    client, project, router = named
    made = create_ready_branch(client, project, name=unique("named"))
    try:
        endpoint, params, ca = _endpoint_of(made)
        ep = endpoint["id"]
        assert not {"port", "pooler_port"} & set(endpoint)
        host = endpoint["host"]
        assert host == params["host"] == f"{ep}.local.localhost"
        # Neon's rule, as clients apply it: `-pooler` after the endpoint id
        pooled_host = host.replace(ep, f"{ep}-pooler", 1)
        assert params["pooler_host"] == pooled_host
        handed_out = urlsplit(made["connection_uris"][0]["connection_uri"])
        assert (handed_out.hostname, handed_out.port) == (host, None)
        assert len(_pids(host, router, params, ca, 2)) == 2  # a backend per client
        assert len(_pids(pooled_host, router, params, ca, 3)) == pooled_backends(3)  # PgBouncer's one
        # SCRAM bound to the certificate the router served
        with _connect(host, router, params, ca, channel_binding="require") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (params["role"],)
        pooled = connection_uri(client, project, made["branch"]["id"], pooled=True)
        assert urlsplit(pooled).hostname == pooled_host
    finally:
        delete_branch(client, project, made["branch"]["id"])


def test_the_router_refuses_what_names_no_endpoint_in_one_line(
    named: tuple[httpx.Client, str, str],
) -> None:
    client, project, router = named
    made = create_ready_branch(client, project, name=unique("named-refusals"))
    try:
        endpoint, params, ca = _endpoint_of(made)
        for host, extra, said in (
            ("ep-nobody-00000000.local.localhost", {}, "no endpoint of this server is named"),
            (endpoint["host"], {"sslmode": "disable"}, "connect with TLS"),
            # the option and the server name disagree: refused, as Neon's proxy does
            (endpoint["host"], {"options": "endpoint=ep-other-1"}, "serves endpoint"),
        ):
            with pytest.raises(psycopg.OperationalError) as refused:
                _connect(host, router, params, ca, **extra).close()
            assert said in str(refused.value), str(refused.value)
    finally:
        delete_branch(client, project, made["branch"]["id"])


def test_without_a_server_name_the_router_routes_by_the_endpoint_option(
    named: tuple[httpx.Client, str, str],
) -> None:
    """Neon's route for a client that sends no SNI (libpq sends none for an address):
    `options=endpoint%3D<id>`, `<id>-pooler` for the pooled path; without it, one line."""
    client, project, router = named
    made = create_ready_branch(client, project, name=unique("named-options"))
    try:
        endpoint, params, ca = _endpoint_of(made)
        ep = endpoint["id"]

        def connect(**extra: str) -> psycopg.Connection:
            # verify-ca: the chain is checked, the address is no name of the certificate's
            return _connect(router, router, params, ca, sslmode="verify-ca", **extra)

        def pids(option: str, times: int, search_path: str) -> set[int]:
            found = set()
            for _ in range(times):
                with connect(options=option) as conn:
                    row = conn.execute("SELECT pg_backend_pid(), current_setting('search_path')").fetchone()
                    assert row is not None and row[1] == search_path
                    found.add(int(row[0]))
            return found

        # direct: a backend each, the other options kept
        assert len(pids(f"endpoint={ep} -c search_path=auth", 2, "auth")) == 2
        # pooled: PgBouncer's one backend (PgBouncer itself takes no other options)
        assert len(pids(f"endpoint={ep}-pooler", 3, '"$user", public')) == pooled_backends(3)
        for extra, said in (
            ({}, "options=endpoint%3D<endpoint id>"),
            ({"options": "endpoint=ep-nobody-00000000"}, "options=endpoint%3D<endpoint id>"),
            ({"options": "endpoint=bad_name!"}, "only letters, digits and hyphens"),
        ):
            with pytest.raises(psycopg.OperationalError) as refused:
                connect(**extra).close()
            assert said in str(refused.value), str(refused.value)
    finally:
        delete_branch(client, project, made["branch"]["id"])


# libpq's old PQcancel: plain TCP, so the router's first packet is the cancel request.
# Run in a process of its own: psycopg's binary PQcancel blocks holding the GIL, which
# would stop the server's thread in this process from answering it.
PLAIN_CANCEL = """
import sys, threading, psycopg
busy = psycopg.connect(sys.argv[1], autocommit=True)
caught = []
def sleep():
    try:
        busy.execute("SELECT pg_sleep(60)")
    except BaseException as exc:
        caught.append(exc)
runner = threading.Thread(target=sleep)
runner.start()
with psycopg.connect(sys.argv[1], autocommit=True) as probe:
    while probe.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
                        " AND state = 'active'").fetchone() != (1,):
        pass
busy.cancel()
runner.join(70)
print(type(caught[0]).__name__ if caught else "finished")
"""


def test_a_cancel_sent_to_the_router_reaches_the_sessions_instance(
    named: tuple[httpx.Client, str, str],
) -> None:
    """A cancel request names no endpoint: in plain TCP the router hands it to the relay's
    keys at once; over TLS (libpq 17+'s PQcancelCreate) the server name routes it to the
    endpoint first. Direct and pooled (PgBouncer's key) both."""
    client, project, router = named
    made = create_ready_branch(client, project, name=unique("named-cancel"))
    try:
        endpoint, params, ca = _endpoint_of(made)
        for name in (endpoint["host"], params["pooler_host"]):
            with _connect(name, router, params, ca) as busy:
                caught = _sleep_then_cancel(busy, lambda: _connect(endpoint["host"], router, params, ca))
                assert isinstance(caught, psycopg.errors.QueryCanceled), (name, caught)
            url = (f"postgresql://{params['role']}:{params['password']}@/{params['database']}?host={name}"
                   f"&hostaddr={router}&port=5432&sslmode=verify-full&sslrootcert={ca}")
            done = subprocess.run([sys.executable, "-c", PLAIN_CANCEL, url], capture_output=True, text=True,
                                  timeout=120, check=False)
            assert done.stdout.strip() == "QueryCanceled", (name, done.stdout, done.stderr[-2000:])
    finally:
        delete_branch(client, project, made["branch"]["id"])


def _sleep_then_cancel(busy: psycopg.Connection, connect: Any) -> BaseException | None:
    """What `busy`'s pg_sleep raised once `busy.cancel_safe()` was called while it ran."""
    caught: list[BaseException] = []

    def sleep() -> None:
        try:
            busy.execute("SELECT pg_sleep(60)")
        except BaseException as exc:  # reported to the test thread
            caught.append(exc)

    def sleeping() -> bool:
        with connect() as probe:
            row = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
                                " AND state = 'active'").fetchone()
        return row == (1,)

    runner = threading.Thread(target=sleep)
    runner.start()
    try:
        assert wait_until(sleeping, timeout=30, backoff=Backoff(0.05))
        busy.cancel_safe()
    finally:
        runner.join(70)
    return caught[0] if caught else None


def test_a_branch_host_serves_time_travel_connections_only(
    named: tuple[httpx.Client, str, str],
) -> None:
    """neonctl's `<branch>@<time>` URL names the branch where the endpoint id was
    (`<branch-id>.local.localhost`, as on Neon): the router hands it to the branch's
    read-write endpoint, for a time-travel connection only (#25 part 3)."""
    client, project, router = named
    made = create_ready_branch(client, project, name=unique("named-travel"))
    try:
        _endpoint, params, ca = _endpoint_of(made)
        branch_host = f"{made['branch']['id']}.local.localhost"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with _connect(branch_host, router, params, ca, options=f"neon_timestamp:{now}") as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.OperationalError) as refused:
            _connect(branch_host, router, params, ca).close()
        assert "serves time travel connections only" in str(refused.value)
    finally:
        delete_branch(client, project, made["branch"]["id"])


def test_names_mode_falls_back_to_addresses_where_the_router_cannot_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _free_router_address()
    monkeypatch.setenv(HOSTS_VAR, "names")
    monkeypatch.setenv(ROUTER_VAR, router)
    with socket.socket() as taken:  # another home's server holds the router's 5432
        taken.bind((router, 5432))
        taken.listen(1)
        with start_test_server(tmp_path / "home") as info, api_client(info) as client:
            [ep] = client.get(f"/projects/{info.project_id}/endpoints").json()["endpoints"]
    assert not ep["host"].endswith(".localhost")
    socket.inet_aton(ep["host"])  # an address, its own or 127.0.0.1


def test_host_settings_are_checked() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOSTS_VAR, "dns")
        with pytest.raises(ConfigError, match=f"{HOSTS_VAR}.*'dns' is not one of auto, addresses, names"):
            host_mode()
        patch.setenv(HOSTS_VAR, "names")
        patch.setenv(ROUTER_VAR, "10.1.2.3")
        with pytest.raises(ConfigError, match="not a loopback address"):
            host_mode()
        patch.setenv(ROUTER_VAR, "127.9.9.9")
        assert host_mode().router_address == "127.9.9.9"
        patch.setenv(HOSTS_VAR, "auto")
        assert not host_mode(resolve=lambda: False).names
    assert route_of("EP-A-1-pooler.local.localhost") == ("ep-a-1", True)
    assert route_of("ep-a-1.local.localhost") == ("ep-a-1", False)
    assert route_of("ep-a-1.localhost") is None
    assert route_of(None) is None


# -- where `*.localhost` resolves (CI, through .ci/run; README "Endpoint hosts") --------


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """A server in the mode `auto` picks where names resolve, its router on 127.0.0.1:5432
    as a user's would be: nothing forced, nothing dialled by address."""
    if not names_resolve():
        pytest.skip("*.localhost does not resolve here (README: Endpoint hosts; .ci/run adds "
                    "nss-myhostname as root)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOSTS_VAR, "auto")
        patch.delenv(ROUTER_VAR, raising=False)
        with start_test_server(tmp_path_factory.mktemp("resolved-home")) as info, api_client(info) as client:
            [endpoint] = client.get(f"/projects/{info.project_id}/endpoints").json()["endpoints"]
            if not endpoint["host"].endswith(".local.localhost"):
                pytest.skip("127.0.0.1:5432 is taken here: the server fell back to addresses")
            yield client, info.project_id


def test_where_names_resolve_urls_built_from_host_connect_by_name_alone(
    resolved: tuple[httpx.Client, str],
) -> None:
    """What a client of Neon's does: a URL from `host` and one with `-pooler` inserted
    after the endpoint id, resolved by the system and verified against the name."""
    client, project = resolved
    made = create_ready_branch(client, project, name=unique("resolved"))
    try:
        endpoint, params, ca = _endpoint_of(made)
        ep, host = endpoint["id"], endpoint["host"]
        pooled_host = host.replace(ep, f"{ep}-pooler", 1)

        def url(built_from: str) -> str:
            return (f"postgresql://{params['role']}:{params['password']}@{built_from}/"
                    f"{params['database']}?sslmode=verify-full&sslrootcert={ca}")

        def backends(built_from: str, times: int) -> set[int]:
            found = set()
            for _ in range(times):
                with psycopg.connect(url(built_from), autocommit=True, connect_timeout=10) as conn:
                    row = conn.execute("SELECT pg_backend_pid(), current_user").fetchone()
                    assert row is not None and row[1] == params["role"]
                    found.add(int(row[0]))
            return found

        assert len(backends(host, 2)) == 2  # the direct path: a backend per client
        assert len(backends(pooled_host, 3)) == pooled_backends(3)  # PgBouncer's one
        for handed_out in (made["connection_uris"][0]["connection_uri"],
                           connection_uri(client, project, made["branch"]["id"], pooled=True)):
            with psycopg.connect(handed_out, autocommit=True, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        delete_branch(client, project, made["branch"]["id"])
