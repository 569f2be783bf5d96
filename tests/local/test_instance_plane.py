"""The data plane (a PostgreSQL per branch) as a client sees it through the relay:
channel binding, cancel requests routed to the session's instance, suspend after idle
and resume on the next login, the pooled path through the instance's own PgBouncer; and
what the retired shared plane left refused in one line."""

from __future__ import annotations

import io
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local import instance_plane
from cathouse_harness.local.compute.layout import memory_bases
from cathouse_harness.local.compute.moments.pitr import PREFIX as BASE_PREFIX
from cathouse_harness.local.compute.probe import tcp_listeners
from cathouse_harness.local.launch import ensure_local_server
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.processes import pid_alive

from tests._pgbouncer import require_pgbouncer
from tests.local._server import api_client, connection_uri, delete_branch, start_test_server, wait_operations
from tests.local.test_history import moment, restore

SUSPEND_AFTER = 1.0


@dataclass(frozen=True)
class Plane:
    client: httpx.Client
    project: str
    main: str
    child: str
    child_pooled: str
    child_id: str
    home: Path


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """The default branch's URL and a child's (direct and pooled), on a server whose
    idle instances stop after SUSPEND_AFTER seconds."""
    home = tmp_path_factory.mktemp("instance-plane")
    home.chmod(0o700)
    saved = instance_plane.SUSPEND_AFTER
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
            child_id = made["branch"]["id"]
            yield Plane(client, project, main, made["connection_uris"][0]["connection_uri"],
                        connection_uri(client, project, child_id, pooled=True), child_id, home)
    finally:
        instance_plane.SUSPEND_AFTER = saved


@pytest.fixture
def urls(plane: Plane) -> tuple[str, str]:
    """(the default branch's URL, a child's)."""
    return plane.main, plane.child


def test_a_home_on_disk_of_the_retired_shared_plane_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server of today would not see the branches a shared-plane home keeps on disk
    and leave their data behind: refused (exit code 2 from the CLI), before anything
    starts; an in-memory home keeps nothing past a stop, and a new home is recorded."""
    from cathouse_harness.cli.commands import main
    from cathouse_harness.local.server import _make_dataplane

    monkeypatch.delenv("CATHOUSE_PG_URL", raising=False)
    fresh, shared, older = (tmp_path / name for name in ("fresh", "shared", "older"))
    for home in (fresh, shared, older):
        home.mkdir(mode=0o700)
    assert type(_make_dataplane(fresh, "disk")).__name__ == "InstanceDataPlane"
    assert (fresh / "data-plane-disk").read_text() == "instance\n"
    (shared / "data-plane-disk").write_text("shared\n")
    (older / "pg" / "data").mkdir(parents=True)  # before the record: the shared cluster's place
    for home in (shared, older):
        _make_dataplane(home, "memory")
        err = io.StringIO()
        assert main(["emulator", "--home", str(home), "--storage", "disk"], out=io.StringIO(), err=err) == 2
        line = err.getvalue().strip()
        assert "\n" not in line and str(home) in line, line
        assert "retired shared data plane" in line and "cathouse-branch gc --all" in line, line
        assert "CATHOUSE_HARNESS_HOME" in line, line


def test_cathouse_pg_url_is_retired_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cathouse_harness.cli.commands import main

    monkeypatch.setenv("CATHOUSE_PG_URL", "postgresql://postgres:pw-must-not-show@127.0.0.1/postgres")
    err = io.StringIO()
    assert main(["emulator", "--home", str(tmp_path)], out=io.StringIO(), err=err) == 2
    line = err.getvalue().strip()
    assert "\n" not in line and "pw-must-not-show" not in line, line
    assert "CATHOUSE_PG_URL" in line and "retired" in line and "CATHOUSE_POSTGRES_BIN" in line, line
    with pytest.raises(ConfigError):
        ensure_local_server(tmp_path)


def test_an_instance_has_the_connection_slots_of_neon_s_smallest_compute(urls: tuple[str, str]) -> None:
    """104 connections, seven kept for the superuser, as a 0.25 CU compute: suites that
    keep an engine per test open dozens at once."""
    with psycopg.connect(urls[1]) as session:
        assert session.execute("SHOW max_connections").fetchone() == ("104",)
        assert session.execute("SHOW superuser_reserved_connections").fetchone() == ("7",)


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


def _pgbouncer_of(branch_id: str) -> int | None:
    """The pid of the PgBouncer in front of the branch's instance, if one runs."""
    mark = f"/instances/{branch_id}/pgbouncer/".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"pgbouncer" in command and mark in command:
                return int(entry.name)
    return None


def _backend(url: str, **kwargs: str) -> tuple[int, int, str]:
    with psycopg.connect(url, **kwargs) as session:
        pid, database = session.execute("SELECT pg_backend_pid(), current_database()").fetchone()  # type: ignore[misc]
        return pid, _postmaster_of(session), database


def test_pooled_logins_share_the_instances_own_pgbouncer(plane: Plane) -> None:
    """Consecutive pooled clients share one server backend of the branch's own instance
    (PgBouncer in transaction mode, one per instance); it listens on no TCP port."""
    require_pgbouncer("sharing a server connection")
    pooled = [_backend(plane.child_pooled) for _ in range(3)]
    assert len({pid for pid, _, _ in pooled}) == 1, pooled
    _, postmaster, database = _backend(plane.child)
    assert {(master, name) for _, master, name in pooled} == {(postmaster, "cathouse")}
    bouncer = _pgbouncer_of(plane.child_id)
    assert bouncer is not None and tcp_listeners(bouncer) == []


def test_a_password_set_in_sql_holds_on_the_pooled_path(plane: Plane) -> None:
    """PgBouncer's auth file follows the instance's pg_authid at each login: a role made
    in SQL logs in pooled, and after ALTER ROLE only its new password does."""
    require_pgbouncer("the pooled path's auth file")
    role = f"r_{secrets.token_hex(3)}"
    with psycopg.connect(plane.child, autocommit=True) as session:
        session.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-secret'")
    assert _backend(plane.child_pooled, user=role, password="first-secret")[2] == "cathouse"
    with psycopg.connect(plane.child, autocommit=True) as session:
        session.execute(f"ALTER ROLE {role} PASSWORD 'second-secret'")
    assert _backend(plane.child_pooled, user=role, password="second-secret")[2] == "cathouse"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _backend(plane.child_pooled, user=role, password="first-secret")


def test_a_pgbouncer_that_died_is_replaced_at_the_next_pooled_login(plane: Plane) -> None:
    require_pgbouncer("PgBouncer per instance")
    _backend(plane.child_pooled)
    bouncer = _pgbouncer_of(plane.child_id)
    assert bouncer is not None
    os.kill(bouncer, signal.SIGKILL)
    assert wait_until(lambda: _pgbouncer_of(plane.child_id) is None, timeout=30, backoff=Backoff(0.05))
    assert _backend(plane.child_pooled)[2] == "cathouse"
    assert _pgbouncer_of(plane.child_id) not in (None, bouncer)


def test_pgbouncer_stops_with_its_suspended_instance(plane: Plane) -> None:
    require_pgbouncer("PgBouncer per instance")
    _, postmaster, _ = _backend(plane.child_pooled)
    bouncer = _pgbouncer_of(plane.child_id)
    assert bouncer is not None
    assert wait_until(lambda: not pid_alive(postmaster) and not pid_alive(bouncer),
                      timeout=60, backoff=Backoff(0.1))
    _, resumed, _ = _backend(plane.child_pooled)  # resume: the instance, then its PgBouncer
    assert resumed != postmaster and _pgbouncer_of(plane.child_id) not in (None, bouncer)


def _values(url: str, options: str = "") -> list[object]:
    with psycopg.connect(url, options=options) as session:
        return [v for (v,) in session.execute("SELECT v FROM moments ORDER BY v").fetchall()]


def test_any_moment_since_a_branch_s_base_is_replayed_from_its_wal(plane: Plane) -> None:
    """Between two writes no branch holds the state (the shared plane refuses it, see
    tests/local/test_divergences.py): here the branch's base and its WAL give it, for a
    new branch at a time or an LSN, a restore, and a time-travel connection; and for a
    child made later, whose history before its branch point is its parent's."""
    client, project = plane.client, plane.project
    made = client.post(f"/projects/{project}/branches",
                       json={"branch": {"name": "moments"}, "endpoints": [{"type": "read_write"}]}).json()
    wait_operations(client, project, made["operations"])
    branch = made["branch"]["id"]
    url = made["connection_uris"][0]["connection_uri"]
    with psycopg.connect(url, autocommit=True) as session:
        session.execute("CREATE TABLE moments (v int)")
        session.execute("INSERT INTO moments VALUES (1)")
        lsn = session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
        between = moment()
        session.execute("INSERT INTO moments VALUES (2)")
    made_here: list[str] = []
    try:
        assert _values(url, f"neon_timestamp:{between}") == [1]
        assert _values(url, f"neon_lsn:{lsn}") == [1]
        for point in ({"parent_timestamp": between}, {"parent_lsn": lsn}):
            child = client.post(f"/projects/{project}/branches", json={
                "branch": {"parent_id": branch, **point}, "endpoints": [{"type": "read_write"}]})
            assert child.status_code == 201, child.text
            wait_operations(client, project, child.json()["operations"])
            made_here.append(child.json()["branch"]["id"])
            child_url = child.json()["connection_uris"][0]["connection_uri"]
            assert _values(child_url) == [1]
            with psycopg.connect(child_url, autocommit=True) as session:  # a branch like any other
                session.execute("INSERT INTO moments VALUES (3)")
            assert _values(child_url) == [1, 3]
        # a child made now: before its branch point, its history is its parent's
        child = client.post(f"/projects/{project}/branches", json={
            "branch": {"parent_id": branch}, "endpoints": [{"type": "read_write"}]}).json()
        wait_operations(client, project, child["operations"])
        made_here.append(child["branch"]["id"])
        child_url = child["connection_uris"][0]["connection_uri"]
        assert _values(child_url, f"neon_timestamp:{between}") == [1]  # with the child's own password
        grandchild = client.post(f"/projects/{project}/branches", json={
            "branch": {"parent_id": child["branch"]["id"], "parent_timestamp": between},
            "endpoints": [{"type": "read_write"}]})
        assert grandchild.status_code == 201, grandchild.text
        wait_operations(client, project, grandchild.json()["operations"])
        made_here.insert(0, grandchild.json()["branch"]["id"])
        assert _values(grandchild.json()["connection_uris"][0]["connection_uri"]) == [1]
        answer = restore(client, project, branch, source_branch_id=branch, source_timestamp=between,
                         preserve_under_name="moments-before")
        assert answer.status_code == 200, answer.text
        wait_operations(client, project, answer.json()["operations"])
        assert _values(connection_uri(client, project, branch, pooled=False)) == [1]
    finally:
        for made_id in made_here:
            delete_branch(client, project, made_id)
        listing = client.get(f"/projects/{project}/branches", params={"search": "moments"}).json()
        for other in listing["branches"]:
            delete_branch(client, project, other["id"])


def _bases(home: Path) -> set[str]:
    """The base copies (`compute.moments.bases`) the home's instances keep now."""
    return {entry.name for base in memory_bases(home) for entry in (base / "instances").iterdir()
            if entry.name.startswith(BASE_PREFIX)}


def test_forks_of_a_branch_nobody_uses_share_one_base_and_keep_their_history(plane: Plane) -> None:
    """Forks of a stopped branch share one base, a copy of that stopped state, and a
    moment of each since its fork is that base and its own WAL replayed."""
    client, project = plane.client, plane.project
    made = client.post(f"/projects/{project}/branches", json={
        "branch": {"name": "unused-parent"}, "endpoints": [{"type": "read_write"}]}).json()
    wait_operations(client, project, made["operations"])
    parent = made["branch"]["id"]
    with psycopg.connect(made["connection_uris"][0]["connection_uri"], autocommit=True) as session:
        session.execute("CREATE TABLE moments (v int)")
        session.execute("INSERT INTO moments VALUES (1)")
        postmaster = _postmaster_of(session)
    assert wait_until(lambda: not pid_alive(postmaster), timeout=60, backoff=Backoff(0.05))  # suspended
    before = _bases(plane.home)
    kids: list[str] = []
    try:
        for _ in range(2):
            kid = client.post(f"/projects/{project}/branches", json={
                "branch": {"parent_id": parent}, "endpoints": [{"type": "read_write"}]}).json()
            wait_operations(client, project, kid["operations"])
            kids.append(kid["branch"]["id"])
            url = kid["connection_uris"][0]["connection_uri"]
            with psycopg.connect(url, autocommit=True) as session:  # its first login waits for its base
                session.execute("INSERT INTO moments VALUES (2)")
                between = moment()
                session.execute("INSERT INTO moments VALUES (3)")
            assert _values(url, f"neon_timestamp:{between}") == [1, 2]
        assert len(_bases(plane.home) - before) == 1
    finally:
        for made_id in [*kids, parent]:
            delete_branch(client, project, made_id)
    # the shared copy goes once neither a branch nor its parent's stopped state needs it
    assert wait_until(lambda: not _bases(plane.home) - before, timeout=30, backoff=Backoff(0.05))


def test_a_fork_suspends_a_branch_its_clients_left(plane: Plane) -> None:
    """A running branch no client uses is copied stopped, as its idle timeout would have
    left it: the fork stops it first (sooner than this module's SUSPEND_AFTER)."""
    client, project = plane.client, plane.project
    made = client.post(f"/projects/{project}/branches", json={
        "branch": {"name": "left-parent"}, "endpoints": [{"type": "read_write"}]}).json()
    wait_operations(client, project, made["operations"])
    parent = made["branch"]["id"]
    kid = None
    try:
        with psycopg.connect(made["connection_uris"][0]["connection_uri"], autocommit=True) as session:
            backend = session.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            postmaster = _postmaster_of(session)
        # the relay has let go of the session once its backend ended
        assert wait_until(lambda: not pid_alive(backend), timeout=30, backoff=Backoff(0.005))
        answer = client.post(f"/projects/{project}/branches", json={
            "branch": {"parent_id": parent}, "endpoints": [{"type": "read_write"}]}).json()
        kid = answer["branch"]["id"]
        wait_operations(client, project, answer["operations"])
        assert not pid_alive(postmaster)
        with psycopg.connect(answer["connection_uris"][0]["connection_uri"]) as session:
            assert session.execute("SELECT 1").fetchone() == (1,)
    finally:
        for made_id in [kid, parent]:
            if made_id is not None:
                delete_branch(client, project, made_id)


def test_the_schema_of_a_suspended_branch_is_read_after_a_resume(plane: Plane) -> None:
    """The schema routes read the instance's socket directly (pg_dump): a suspended
    instance is started for them, as for a login."""
    with psycopg.connect(plane.child, autocommit=True) as session:
        session.execute("CREATE TABLE IF NOT EXISTS read_while_suspended (v int)")
        postmaster = _postmaster_of(session)
    assert wait_until(lambda: not pid_alive(postmaster), timeout=60, backoff=Backoff(0.05))
    answer = plane.client.get(f"/projects/{plane.project}/branches/{plane.child_id}/schema",
                              params={"db_name": "cathouse"})
    assert answer.status_code == 200, answer.text
    assert "read_while_suspended" in answer.json()["sql"]


def test_every_child_has_its_parent_lsn_and_it_names_the_state_copied(plane: Plane) -> None:
    """Neon's branch record carries `parent_lsn` for every child; here each fork and
    replay names it, also when the parent was not quiet (a session open on it, a moment
    between two writes), where the history's read after the copy names nothing; and a
    replay holds its moment for the history whether the parent was quiet or not."""
    client, project = plane.client, plane.project

    def child_of(parent: str, **point: str) -> dict[str, object]:
        made = client.post(f"/projects/{project}/branches", json={
            "branch": {"parent_id": parent, "name": f"lsns-{secrets.token_hex(3)}", **point},
            "endpoints": [{"type": "read_write"}]})
        assert made.status_code == 201, made.text
        wait_operations(client, project, made.json()["operations"])
        made_here.insert(0, made.json()["branch"]["id"])
        return dict(client.get(f"/projects/{project}/branches/{made_here[0]}").json()["branch"])

    def rows(branch: object) -> list[object]:
        with psycopg.connect(connection_uri(client, project, str(branch), pooled=False)) as session:
            return [v for (v,) in session.execute("SELECT v FROM lsns ORDER BY v").fetchall()]

    made_here: list[str] = []
    try:
        base = str(child_of(plane.child_id)["id"])
        url = connection_uri(client, project, base, pooled=False)
        with psycopg.connect(url, autocommit=True) as session:
            session.execute("CREATE TABLE lsns AS SELECT 1 AS v")
            live = child_of(base)  # forked while this session is open
            between = moment()
            session.execute("INSERT INTO lsns VALUES (2)")
            replayed = child_of(base, parent_timestamp=between)
        # the replay holds the parent as of `between`, a session open or not: the
        # history serves that moment from it (the schema route serves no replay)
        schema = client.get(f"/projects/{project}/branches/{base}/schema",
                            params={"db_name": "cathouse", "timestamp": between})
        assert schema.status_code == 200 and "lsns" in schema.json()["sql"], schema.text
        session_gone = child_of(base)  # the parent quiet again, its instance running
        for child, expected in ((live, [1]), (replayed, [1]), (session_gone, [1, 2])):
            assert isinstance(child["parent_lsn"], str) and child["parent_lsn"] != "0/0", child
            assert rows(child["id"]) == expected
            # the LSN names that state of the parent: a branch at it holds the same rows
            again = child_of(base, parent_lsn=child["parent_lsn"])
            assert again["parent_lsn"] == child["parent_lsn"] and rows(again["id"]) == expected
    finally:
        for made_id in made_here:
            delete_branch(client, project, made_id)


@pytest.mark.skipif(os.geteuid() != 0, reason="a home has an OS user of its own only when run as root")
def test_a_clean_stop_of_an_in_memory_home_deletes_its_os_user(tmp_path: Path) -> None:
    """Its instances are gone with the stop, so nothing is left for a sweep to find
    the user by: left, every test home and every daemon restart added a line to
    /etc/passwd and /etc/group for good."""
    import grp
    import pwd

    from cathouse_harness.local.compute.users import home_user_name

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    name = home_user_name(home)
    with start_test_server(home, keep_data=True):  # the test removes nothing itself
        assert pwd.getpwnam(name).pw_gecos.endswith(str(home))
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)
