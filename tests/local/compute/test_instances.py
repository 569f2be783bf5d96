"""An instance per branch (#24): each has its own roles, real names, a socket only, its
own files; forks copy committed data and never a parent's open transaction."""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute import fork as forks
from cathouse_harness.local.compute import instance as instances
from cathouse_harness.local.compute import layout, probe, roots, spares, users
from cathouse_harness.local.compute.instance import Instance
from cathouse_harness.local.compute.moments import reads as compute_history
from cathouse_harness.local.compute.moments import standby
from cathouse_harness.local.pg_layout import SUPERUSER
from cathouse_harness.support.redact import Secret

from tests.local.compute.conftest import DATABASE, OWNER, PASSWORD, Computes, connect


def _running_root(computes: Computes) -> None:
    instances.start(computes.root)


def _two_children(computes: Computes) -> tuple[Instance, Instance]:
    """Two branches of the stopped root, as two sibling branches of one parent."""
    instances.stop(computes.root)
    return (computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("a"))),
            computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("b"))))


def test_a_password_changed_in_one_instance_leaves_the_others_alone(computes: Computes) -> None:
    a, b = _two_children(computes)
    with connect(a) as session:
        session.execute("ALTER ROLE CURRENT_USER PASSWORD 'changed-in-a'")
    with connect(b) as session:
        assert session.execute("SELECT current_user").fetchone() == (OWNER,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(b, password="changed-in-a")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(a)
    with connect(a, password="changed-in-a") as session:
        assert session.execute("SELECT current_user").fetchone() == (OWNER,)


def test_a_role_option_set_in_one_instance_does_not_reach_another(computes: Computes) -> None:
    a, b = _two_children(computes)
    with connect(a) as session:
        session.execute("ALTER ROLE CURRENT_USER SET default_transaction_read_only = on")
    with connect(a) as session:
        assert session.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    with connect(b) as session:
        assert session.execute("SHOW default_transaction_read_only").fetchone() == ("off",)


def test_the_database_and_the_role_have_their_real_names(computes: Computes) -> None:
    _running_root(computes)
    with connect(computes.root) as session:
        row = session.execute(
            "SELECT current_database(), current_user, datname FROM pg_stat_activity"
            " WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == (DATABASE, OWNER, DATABASE)


def test_the_owner_is_neon_superuser_like_and_not_a_superuser(computes: Computes) -> None:
    _running_root(computes)
    with connect(computes.root) as session:
        rolsuper, createdb, createrole, bypassrls = session.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert (rolsuper, createdb, createrole, bypassrls) == (False, True, True, True)
        assert session.execute("SELECT pg_has_role('neon_superuser', 'MEMBER')").fetchone() == (True,)
        session.execute("CREATE DATABASE made_by_the_owner")
        session.execute("DROP DATABASE made_by_the_owner")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute("COPY (SELECT 1) TO PROGRAM 'true'")


def test_the_superuser_needs_the_control_planes_password(computes: Computes) -> None:
    _running_root(computes)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(computes.root, user=SUPERUSER, password="guessed", database="postgres")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(computes.root, user=SUPERUSER, password=PASSWORD, database="postgres")
    with instances.admin_session(computes.root) as session:
        row = session.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (True,)


@pytest.mark.parametrize("name", [SUPERUSER, "pg_monitor", "pg_anything", roots.NEON_SUPERUSER, ""])
def test_cluster_role_names_are_refused(name: str) -> None:
    with pytest.raises(LocalServerError):
        roots.check_role_name(name)


def test_a_live_fork_has_committed_rows_and_not_the_parents_open_transaction(computes: Computes) -> None:
    _running_root(computes)
    with connect(computes.root) as session:
        session.execute("CREATE TABLE IF NOT EXISTS visits (label text)")
        session.execute("INSERT INTO visits VALUES ('committed')")
    with connect(computes.root, autocommit=False) as open_tx:
        open_tx.execute("INSERT INTO visits VALUES ('uncommitted')")
        child = computes.keep(forks.fork_live(computes.root, computes.compute, computes.name("live")))
        open_tx.commit()  # committed in the parent only after the fork
    with connect(child) as session:
        labels = [row[0] for row in session.execute("SELECT label FROM visits")]
    assert "committed" in labels
    assert "uncommitted" not in labels
    with connect(computes.root) as session:
        parent_labels = [row[0] for row in session.execute("SELECT label FROM visits")]
    assert "uncommitted" in parent_labels  # the parent's own transaction went on undisturbed


def test_fork_chooses_a_live_copy_for_a_running_parent_and_a_plain_one_otherwise(computes: Computes) -> None:
    _running_root(computes)
    with connect(computes.root) as session:
        session.execute("CREATE TABLE IF NOT EXISTS marks (n int)")
        session.execute("INSERT INTO marks VALUES (1)")
    live = computes.keep(forks.fork(computes.root, computes.compute, computes.name("f")))
    assert (live.paths.data / "backup_label").exists() is False  # consumed by the child's start
    with pytest.raises(LocalServerError, match="runs"):
        forks.fork_stopped(computes.root, computes.compute, computes.name("f"))
    instances.stop(computes.root)
    stopped = computes.keep(forks.fork(computes.root, computes.compute, computes.name("f")))
    for child in (live, stopped):
        with connect(child) as session:
            assert session.execute("SELECT count(*) FROM marks").fetchone()[0] >= 1


def test_a_stopped_instance_starts_again_with_its_data(computes: Computes) -> None:
    instances.stop(computes.root)
    child = computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("s")))
    with connect(child) as session:
        session.execute("CREATE TABLE kept (v text)")
        session.execute("INSERT INTO kept VALUES ('before the stop')")
    instances.stop(child)
    assert instances.running_pid(child) is None
    with pytest.raises(psycopg.OperationalError):
        connect(child)
    instances.start(child)
    with connect(child) as session:
        assert session.execute("SELECT v FROM kept").fetchall() == [("before the stop",)]


def test_a_long_branch_id_gets_a_short_socket_directory_removed_with_it(computes: Computes) -> None:
    """Branch ids of Neon's shape can make `<base>/instances/<id>/run/.s.PGSQL.5432`
    longer than a socket address holds (108 bytes): such an instance's sockets go to a
    short directory of its own, which goes when the instance does."""
    name = "br-" + "w" * (40 - 3)  # the longest name an instance may have
    own = layout.InstancePaths.under(computes.compute.instance_dir(name)).socket_dir
    paths = layout.instance_paths(computes.compute, name)
    if len(str(own / ".s.PGSQL.5432")) <= 107:
        pytest.skip(f"the home's base {computes.compute.base} is short enough for any name")
    assert paths.socket_dir.parent != paths.root and len(str(layout.socket_file(paths))) <= 107
    instances.stop(computes.root)
    child = forks.fork_stopped(computes.root, computes.compute, name)
    try:
        with connect(child) as session:
            assert session.execute("SELECT current_database()").fetchone() == (DATABASE,)
    finally:
        instances.remove(child)
    assert not paths.socket_dir.exists() and not paths.root.exists()


def test_the_postmaster_listens_on_its_socket_and_on_no_tcp_port(computes: Computes) -> None:
    _running_root(computes)
    pid = instances.running_pid(computes.root)
    assert pid is not None
    assert probe.tcp_listeners(pid) == []
    assert stat.S_ISSOCK(os.stat(layout.socket_file(computes.root.paths)).st_mode)
    with connect(computes.root) as session:
        assert session.execute("SHOW listen_addresses").fetchone() == ("",)


def test_the_listener_probe_sees_a_tcp_listener() -> None:
    # the probe above must be able to fail: a process that does listen is seen
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert any(entry.endswith(f":{port:04X}") for entry in probe.tcp_listeners(os.getpid()))


def test_data_directories_are_closed_and_belong_to_the_homes_user(computes: Computes) -> None:
    instances.stop(computes.root)
    child = computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("p")))
    user = computes.compute.user
    for directory in (computes.compute.base, child.paths.root, child.paths.data, computes.root.paths.data,
                      child.paths.socket_dir):
        st = os.lstat(directory)
        assert stat.S_IMODE(st.st_mode) == 0o700, directory
        assert st.st_uid == user.uid, directory
    for folder, dirs, files in os.walk(child.paths.data):
        for name in (*dirs, *files):
            st = os.lstat(Path(folder, name))
            assert st.st_uid == user.uid, name
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, name
    if os.geteuid() == 0:
        assert user.uid != 0 and user.name == users.home_user_name(computes.compute.home)


def test_each_home_has_an_os_user_of_its_own_as_root(tmp_path: Path, computes: Computes) -> None:
    other_home = tmp_path / "other-home"
    other_home.mkdir(mode=0o700)
    other = users.home_os_user(other_home)
    try:
        if os.geteuid() == 0:
            assert other.uid != computes.compute.user.uid
            assert other.uid != 0
        else:  # a developer's homes all run as that developer
            assert other.uid == computes.compute.user.uid == os.geteuid()
    finally:
        users.remove_home_user(other_home)


def test_a_fork_takes_a_spare_made_ahead_and_never_a_stale_one(computes: Computes) -> None:
    instances.stop(computes.root)
    assert spares.prepare(computes.root, computes.compute, 2) == 2
    first = computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("sp")))
    assert spares.prepare(computes.root, computes.compute, 0) == 1  # one taken, one left
    with connect(first) as session:
        assert session.execute("SELECT current_database()").fetchone() == (DATABASE,)
    # the parent runs and changes: the spare left is of the state before, and must go
    instances.start(computes.root)
    with connect(computes.root) as session:
        session.execute("CREATE TABLE after_the_spares (v int)")
    instances.stop(computes.root)
    second = computes.keep(forks.fork_stopped(computes.root, computes.compute, computes.name("sp")))
    with connect(second) as session:
        assert session.execute("SELECT to_regclass('after_the_spares') IS NOT NULL").fetchone() == (True,)


def test_refills_asked_for_together_make_one_spare(computes: Computes) -> None:
    """Forks arriving together (xdist workers) each ask for a refill: one makes it, the
    others leave at once instead of copying the same parent side by side."""
    _running_root(computes)
    instances.stop(computes.root)  # a state no spare was made of yet
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: spares.prepare(computes.root, computes.compute, 1), range(4)))
    assert set(made) <= {0, 1} and 1 in made, made  # 0: another was making it
    assert spares.prepare(computes.root, computes.compute, 0) == 1  # one, not one each
    assert not [entry for entry in (computes.compute.base / "spares").iterdir()
                if entry.name.startswith(".staging")]


def test_the_superusers_password_never_shows(computes: Computes) -> None:
    password = computes.root.superuser_password.reveal()
    assert password not in repr(computes.root)
    assert password not in repr(computes.compute)
    broken = dataclasses.replace(computes.root, superuser_password=Secret(password + "-wrong"))
    _running_root(computes)
    with pytest.raises(LocalServerError) as refused, instances.admin_session(broken):
        pass
    assert password not in str(refused.value)
    secret_files = list(computes.compute.state.glob("superuser-*.secret"))
    assert secret_files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in secret_files)


@pytest.mark.parametrize("parent_running", [False, True], ids=["stopped-parent", "running-parent"])
def test_a_read_only_fork_refuses_writes_whatever_the_session_sets(
    computes: Computes, parent_running: bool
) -> None:
    _running_root(computes)
    with connect(computes.root) as session:
        session.execute("CREATE TABLE IF NOT EXISTS replicated (v int)")
        session.execute("INSERT INTO replicated VALUES (7)")
    if not parent_running:
        instances.stop(computes.root)
    replica = computes.keep(forks.fork(computes.root, computes.compute, computes.name("ro"), read_only=True))
    with connect(replica) as session:
        assert session.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert (7,) in session.execute("SELECT v FROM replicated").fetchall()
        session.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute("INSERT INTO replicated VALUES (8)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute("CREATE DATABASE not_on_a_replica")


def test_a_schema_only_copy_keeps_every_object_and_no_row(computes: Computes) -> None:
    """What `pg_dump --schema-only` into a fresh instance would leave, made in place."""
    _running_root(computes)
    child = computes.keep(forks.fork(computes.root, computes.compute, computes.name("schema")))
    with connect(child) as session:
        session.execute("CREATE TABLE parents (id serial PRIMARY KEY, v text)")
        session.execute("CREATE TABLE kids (parent int REFERENCES parents,"
                        " n int GENERATED ALWAYS AS IDENTITY)")
        session.execute("INSERT INTO parents (v) VALUES ('a'), ('b')")
        session.execute("INSERT INTO kids (parent) VALUES (1), (2)")
        session.execute("CREATE SEQUENCE loose")
        session.execute("SELECT nextval('loose'), nextval('loose')")
        session.execute("CREATE MATERIALIZED VIEW counted AS SELECT count(*) AS n FROM parents")
        session.execute("SELECT lo_from_bytea(0, 'large')")
    assert DATABASE in standby.empty_databases(child)
    with connect(child) as session:
        assert session.execute("SELECT (SELECT count(*) FROM parents), (SELECT count(*) FROM kids),"
                               " (SELECT count(*) FROM pg_largeobject_metadata)").fetchone() == (0, 0, 0)
        assert session.execute("INSERT INTO parents (v) VALUES ('c') RETURNING id").fetchone() == (1,)
        assert session.execute("SELECT nextval('loose')").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):  # not populated
            session.execute("SELECT n FROM counted")


def test_a_standby_takes_the_logins_of_the_branch_it_serves(computes: Computes) -> None:
    """A time-travel connection served by another branch's copy logs in with its own
    branch's password (the relay passes the client's proof on), never the copy's."""
    _running_root(computes)
    other = computes.keep(forks.fork(computes.root, computes.compute, computes.name("pw")))
    with connect(other) as session:
        session.execute("ALTER ROLE CURRENT_USER PASSWORD 'of-the-other-branch'")
    wanted = standby.differing(standby.login_verifiers(other), standby.login_verifiers(computes.root))
    assert list(wanted) == [OWNER]
    copy = computes.keep(standby.standby_of(computes.root, computes.compute, computes.name("tt"),
                                            verifiers=wanted))
    with connect(copy, password="of-the-other-branch") as session:
        assert session.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(copy).close()


def test_an_instance_s_lsn_while_it_runs_and_once_stopped(computes: Computes) -> None:
    child = computes.keep(forks.fork(computes.root, computes.compute, computes.name("lsn")))
    with connect(child) as session:
        session.execute("CREATE TABLE moved (v int)")
        now = session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert compute_history.lsn_of(child) == now[0]  # type: ignore[index]
    instances.stop(child)
    control = subprocess.run([child.bin("pg_controldata"), str(child.paths.data)], capture_output=True,
                             text=True, check=True, env={"LC_ALL": "C"}).stdout
    [checkpoint] = [line.split(":", 1)[1].strip() for line in control.splitlines()
                    if line.startswith("Latest checkpoint location")]
    assert compute_history.lsn_of(child) == checkpoint
