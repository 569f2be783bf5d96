"""The instance data plane (`CATHOUSE_LOCAL_COMPUTE=instance`) as a client sees it through
the relay: channel binding, cancel requests routed to the session's instance, suspend
after idle and resume on the next login. The shared plane stays the default."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local import instance_plane
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.processes import pid_alive

from tests.local._server import api_client, start_test_server, wait_operations

SUSPEND_AFTER = 1.0


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the default branch's URL, a child's), on a server whose idle instances stop
    after SUSPEND_AFTER seconds."""
    home = tmp_path_factory.mktemp("instance-plane")
    home.chmod(0o700)
    saved = os.environ.get(instance_plane.ENV_VAR), instance_plane.SUSPEND_AFTER
    os.environ[instance_plane.ENV_VAR] = "instance"
    instance_plane.SUSPEND_AFTER = SUSPEND_AFTER
    try:
        with start_test_server(home) as info:
            client = api_client(info)
            project = info.project_id
            names = {"database_name": "cathouse", "role_name": "cathouse_owner"}
            main = client.get(f"/projects/{project}/connection_uri", params=names).json()["uri"]
            made = client.post(f"/projects/{project}/branches",
                               json={"endpoints": [{"type": "read_write"}]}).json()
            wait_operations(client, project, made["operations"])
            yield main, made["connection_uris"][0]["connection_uri"]
    finally:
        instance_plane.SUSPEND_AFTER = saved[1]
        if saved[0] is None:
            os.environ.pop(instance_plane.ENV_VAR, None)
        else:
            os.environ[instance_plane.ENV_VAR] = saved[0]


def test_shared_is_the_default_and_a_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(instance_plane.ENV_VAR, raising=False)
    assert instance_plane.compute_choice() == "shared"
    monkeypatch.setenv(instance_plane.ENV_VAR, "per-branch")
    with pytest.raises(LocalServerError) as caught:
        instance_plane.compute_choice()
    assert "CATHOUSE_LOCAL_COMPUTE='per-branch'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_channel_binding_is_required_and_given(urls: tuple[str, str]) -> None:
    with psycopg.connect(urls[0], channel_binding="require") as session:
        assert session.execute("SELECT current_database(), current_user").fetchone() == (
            "cathouse", "cathouse_owner")


def test_a_cancel_reaches_the_sessions_own_instance(urls: tuple[str, str]) -> None:
    """The cancel request names no endpoint: the relay finds the instance by the key."""
    with psycopg.connect(urls[1]) as busy, psycopg.connect(urls[0]) as other:
        started = threading.Event()
        failure: list[BaseException] = []

        def sleep() -> None:
            started.set()
            try:
                busy.execute("SELECT pg_sleep(120)")
            except BaseException as exc:  # reported to the test thread
                failure.append(exc)

        runner = threading.Thread(target=sleep)
        runner.start()
        started.wait()
        assert wait_until(lambda: _sleeping(urls[1]), timeout=60, backoff=Backoff(0.05))
        busy.cancel_safe()
        runner.join(60)
        assert failure and isinstance(failure[0], psycopg.errors.QueryCanceled), failure
        assert other.execute("SELECT 1").fetchone() == (1,)  # the other branch's session untouched


def _sleeping(url: str) -> bool:
    with psycopg.connect(url) as probe:
        row = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'"
                            " AND state = 'active'").fetchone()
    return row == (1,)


def _postmaster_of(session: psycopg.Connection) -> int:
    backend = session.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    status = Path(f"/proc/{backend}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_an_idle_instance_is_suspended_and_resumed_by_a_login(urls: tuple[str, str]) -> None:
    with psycopg.connect(urls[1], autocommit=True) as session:
        session.execute("CREATE TABLE IF NOT EXISTS survives (v int)")
        session.execute("INSERT INTO survives VALUES (1)")
        postmaster = _postmaster_of(session)
    assert wait_until(lambda: not pid_alive(postmaster), timeout=60, backoff=Backoff(0.1))
    with psycopg.connect(urls[1]) as session:
        assert _postmaster_of(session) != postmaster
        assert session.execute("SELECT count(*) FROM survives").fetchone() == (1,)
