"""What the harness leaves on the machine outside the project (issue 26, part 6): the
initdb cache stays bounded, `gc --all` removes the rest and names each removal, a
cluster another server still uses stays, and the system user made as root is announced
once and never removed silently.

/dev/shm and /var/tmp are stood in for by directories of the test's (as in
tests/security/test_shared_dirs.py), so nothing real of this machine's is touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cathouse_harness.cleanup.leftovers import KEEP_INITDB, clean_leftovers
from cathouse_harness.local import locations, pg_binaries
from cathouse_harness.local.compute import lease

from tests.cli._support import cli
from tests.plugin._support import copy_example


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Our per-user directories in stand-ins for /dev/shm and /var/tmp."""
    mine = {}
    for name, attribute in (("shm", "SHM_DIR"), ("var-tmp", "VAR_TMP_DIR")):
        root = tmp_path / name
        root.mkdir()
        root.chmod(0o1777)
        monkeypatch.setattr(locations, attribute, root)
        mine[name] = root / f"{locations.PREFIX}{os.geteuid()}"
        mine[name].mkdir(mode=0o700)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return mine


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    (path / "runs").mkdir(parents=True, mode=0o700)
    path.chmod(0o700)
    (path / "local-api-key").write_text("not a real key\n")
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(path))
    return path


def _cluster(parent: Path, name: str, home: Path) -> Path:
    root = parent / name
    (root / "data").mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (root / "lease").write_text("")
    (root / "home").write_text(str(home))
    return root


@pytest.fixture
def in_use(shared: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    """A cluster of another home whose server runs: its lease is held."""
    root = _cluster(shared["shm"], "0123456789ab", tmp_path / "other-home")
    fd = os.open(root / "lease", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)
    yield root
    os.close(fd)


def test_gc_all_removes_what_the_harness_made_and_names_it(
    shared: dict[str, Path], home: Path, in_use: Path, tmp_path: Path
) -> None:
    project = copy_example(tmp_path / "project")
    cluster = _cluster(shared["shm"], "ba9876543210", home)
    initdb = shared["var-tmp"] / "initdb-abcdef123456"
    initdb.mkdir()
    binaries = shared["var-tmp"] / "pginstall-17.5"
    binaries.mkdir()

    code, out, err = cli("gc", "--all", "--dry-run", "--json", cwd=project)
    assert code == 0, err
    planned = json.loads(out)["cleaned"]
    assert all(p.exists() for p in (home, cluster, initdb, binaries)), "a dry run removed something"
    assert f"would remove {home} (the harness home)" in planned

    code, out, err = cli("gc", "--all", cwd=project)
    assert code == 0, err
    lines = out.splitlines()
    assert f"removed {home} (the harness home)" in lines and not home.exists()
    assert f"removed {cluster}" in lines and not cluster.exists()
    # another home's server still runs on its cluster, and so on the caches it may use
    assert f"kept {in_use}: a running local server uses it" in lines and in_use.exists()
    other = tmp_path / "other-home"
    assert (f"kept {shared['var-tmp']} (initdb-abcdef123456, pginstall-17.5): the running local "
            f"server of {other} uses it; `cathouse-branch gc --stop-others` stops them first") in lines
    assert initdb.exists() and binaries.exists()
    assert project.exists() and (project / "pyproject.toml").exists()


def test_gc_all_leaves_the_caches_while_another_homes_server_holds_them(
    shared: dict[str, Path], home: Path, tmp_path: Path
) -> None:
    """A server whose clusters are not in the shared places (a disk cluster in its home)
    uses the caches too: its hold (`lease.hold_caches`, taken by every server) keeps them."""
    project = copy_example(tmp_path / "project")
    caches = [shared["var-tmp"] / name for name in ("initdb-abcdef123456", "pginstall-17.5", "sock-0a1b2c")]
    for cache in caches:
        cache.mkdir()
    other = tmp_path / "other-home"
    held = lease.hold_caches(other, switch=False)
    assert held is not None
    try:
        assert lease.cache_users(shared["var-tmp"]) == [other]
        code, out, err = cli("gc", "--all", cwd=project)
        assert code == 0, err
        kept = [line for line in out.splitlines() if line.startswith(f"kept {shared['var-tmp']} ")]
        assert kept == [f"kept {shared['var-tmp']} (initdb-abcdef123456, pginstall-17.5, servers, "
                        f"sock-0a1b2c): the running local server of {other} uses it; "
                        "`cathouse-branch gc --stop-others` stops them first"]
        assert all(cache.exists() for cache in caches) and not home.exists()
    finally:
        lease.release(held)
    # that server stopped: nothing of ours is left
    code, out, err = cli("gc", "--all", cwd=project)
    assert code == 0, err
    assert not any(cache.exists() for cache in caches)
    assert not shared["var-tmp"].exists() and lease.cache_users(shared["var-tmp"]) == []


def test_gc_all_keeps_a_home_it_did_not_make(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_example(tmp_path / "project")
    stranger = tmp_path / "not-a-harness-home"
    stranger.mkdir(mode=0o700)
    (stranger / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(stranger))
    code, out, err = cli("gc", "--all", cwd=project)
    assert code == 0, err
    assert f"kept {stranger}: nothing in it was made by the harness" in out.splitlines()
    assert (stranger / "notes.txt").exists()


def test_the_initdb_cache_keeps_the_ones_used_last(shared: dict[str, Path], home: Path) -> None:
    made = []
    for age, key in enumerate(("aaaa00000001", "aaaa00000002", "aaaa00000003", "aaaa00000004")):
        skeleton = shared["var-tmp"] / f"initdb-{key}"
        skeleton.mkdir()
        stamp = time.time() - 3600 * (4 - age)  # the last made is the last used
        os.utime(skeleton, (stamp, stamp))
        made.append(skeleton)
    clean_leftovers(home)
    assert [s.exists() for s in made] == [False] * (4 - KEEP_INITDB) + [True] * KEEP_INITDB


def test_root_is_told_once_about_the_system_user_it_gets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """useradd itself is not run here (it would change this machine): the user appears
    as it would after it."""
    created: list[list[str]] = []
    me = pwd.getpwuid(os.getuid())

    def useradd(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        created.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pg_binaries.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pg_binaries.subprocess, "run", useradd)
    monkeypatch.setattr(pg_binaries, "_user_entry", lambda name: me if created else None)
    with caplog.at_level(logging.WARNING, logger="cathouse_harness"):
        user = pg_binaries.resolve_os_user()
        again = pg_binaries.resolve_os_user()
    assert user == again and len(created) == 1 and "--system" in created[0]
    said = [r.getMessage() for r in caplog.records if pg_binaries.PG_SYSTEM_USER in r.getMessage()]
    assert said == [pg_binaries.CREATED_USER] and f"userdel {pg_binaries.PG_SYSTEM_USER}" in said[0]


def test_a_running_server_holds_its_users_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `gc --all` reads, as a real server holds it (in this machine's /var/tmp
    directory of ours, only read here): from its start to its stop."""
    from cathouse_harness.local.launch import ensure_local_server, stop_local_server

    from tests.plugin._support import home_of_its_own

    with home_of_its_own(tmp_path, monkeypatch) as home:
        ensure_local_server(home)
        base = locations.VAR_TMP_DIR / f"{locations.PREFIX}{os.geteuid()}"
        assert home.resolve() in lease.cache_users(base)
        stop_local_server(home)
        assert home.resolve() not in lease.cache_users(base)


def test_gc_stop_others_stops_another_homes_server_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    """A real server of another home, on stand-ins for /dev/shm and /var/tmp that its
    PostgreSQL's user can pass through (tmp_path's parents are closed to it)."""
    import shutil
    import sys
    import tempfile

    from cathouse_harness.local.discovery import live_server

    root = Path(tempfile.mkdtemp(prefix="cg", dir="/tmp"))  # short: sockets live below it
    try:
        root.chmod(0o755)
        stand_ins = {}
        for attribute in ("SHM_DIR", "VAR_TMP_DIR"):
            stand_ins[attribute] = root / attribute[0].lower()
            stand_ins[attribute].mkdir()
            stand_ins[attribute].chmod(0o1777)
            monkeypatch.setattr(locations, attribute, stand_ins[attribute])
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        other = tmp_path / "other-home"
        other.mkdir(mode=0o700)
        serve = (
            "import sys\nfrom pathlib import Path\nfrom cathouse_harness.local import locations\n"
            f"locations.SHM_DIR = Path({str(stand_ins['SHM_DIR'])!r})\n"
            f"locations.VAR_TMP_DIR = Path({str(stand_ins['VAR_TMP_DIR'])!r})\n"
            "from cathouse_harness.local.server import main\n"
            f"sys.exit(main(['--home', {str(other)!r}, '--daemon', '--idle-timeout', '300']))\n"
        )
        logged = tmp_path / "server.log"
        with logged.open("wb") as log:
            server = subprocess.Popen([sys.executable, "-c", serve], stdout=log, stderr=log,
                                      start_new_session=True,
                                      env=dict(os.environ))
        try:
            deadline = time.monotonic() + 120
            while live_server(other, "memory") is None:
                assert server.poll() is None and time.monotonic() < deadline, logged.read_text()
                time.sleep(0.05)
            mine = stand_ins["VAR_TMP_DIR"] / f"{locations.PREFIX}{os.geteuid()}"
            assert lease.cache_users(mine) == [other]
            project = copy_example(tmp_path / "project")

            code, out, err = cli("gc", "--all", cwd=project)
            assert code == 0, err
            assert any(line.startswith(f"kept {mine} (") and str(other) in line for line in out.splitlines())
            assert live_server(other, "memory") is not None

            code, out, err = cli("gc", "--stop-others", cwd=project)
            assert code == 0, err
            assert f"stopped the local server of {other}" in out.splitlines()
            assert server.wait(30) == 0
            left = [p for stand_in in stand_ins.values() for p in stand_in.rglob("*")]
            assert left == [], out
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
