"""What a SIGKILLed server of the instance data plane leaves (#24): a postmaster per
branch still running, their data directories and, as root, the home's OS user.
`clean_leftovers` (a server's start, `cathouse-branch gc`) stops the orphans while the
home exists and removes the rest with the home; `cathouse-branch gc --all` removes all
of it.

The server is a real process (it must be killed), run with /dev/shm and /var/tmp stood
in for by directories of the test's, so `gc --all` touches nothing real of this
machine's; the stand-ins are outside pytest's 0700 temporary root, since the home's OS
user must reach its instances there.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from cathouse_harness.cleanup.leftovers import clean_leftovers
from cathouse_harness.local import locations
from cathouse_harness.local.compute.users import home_user_name, remove_home_user
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.processes import pid_alive

from tests.cli._support import cli
from tests.local._server import wait_operations
from tests.plugin._support import copy_example
from tests.security._support import REPO

_SERVE = """
import asyncio, json, sys
from pathlib import Path
from cathouse_harness.local import locations
locations.SHM_DIR, locations.VAR_TMP_DIR = Path(sys.argv[2]), Path(sys.argv[3])
from cathouse_harness.local.server import serve

def ready(info):
    print(json.dumps({"api": info.api_host, "key": info.api_key.reveal(), "project": info.project_id}),
          flush=True)

asyncio.run(serve(Path(sys.argv[1]), database="cathouse", role="cathouse_owner"))
""".replace("serve(Path(sys.argv[1]),", "serve(Path(sys.argv[1]), ready=ready,")


@dataclass(frozen=True)
class Killed:
    home: Path
    base: Path  # the home's compute base in the stand-in /dev/shm
    postmasters: list[int]


def _short_dir() -> Path:
    """A new directory of ours as short as /dev/shm (`/tmp/` and 4 hex digits): an
    instance's socket path under it must fit a socket address as it does there."""
    while True:
        place = Path("/tmp") / secrets.token_hex(2)
        with contextlib.suppress(FileExistsError):
            place.mkdir(mode=0o700)
            return place


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Path, Path]]:
    """For the module: the PostgreSQL the servers copy there is copied once."""
    places = [_short_dir(), _short_dir()]
    with pytest.MonkeyPatch.context() as patch:
        for attribute, place in zip(("SHM_DIR", "VAR_TMP_DIR"), places, strict=True):
            place.chmod(0o1777)
            patch.setattr(locations, attribute, place)
        patch.delenv("XDG_RUNTIME_DIR", raising=False)
        yield places[0], places[1]
    for place in places:
        shutil.rmtree(place, ignore_errors=True)


def _postmasters(base: Path, instances: str = "instances/*") -> list[int]:
    found = []
    for pid_file in sorted(base.glob(f"{instances}/data/postmaster.pid")):
        pid = int(pid_file.read_text().split()[0])
        if pid_alive(pid):
            found.append(pid)
    return found


def _base_of(shm: Path, home: Path) -> Path:
    """The compute base that names `home` (the lease's `home` file)."""
    [base] = [entry for entry in (shm / f"{locations.PREFIX}{os.geteuid()}").iterdir()
              if (entry / "home").is_file() and (entry / "home").read_text() == str(home)]
    return base


def _quit_all(shm: Path) -> None:
    """Whatever a failed test left running under the stand-in /dev/shm."""
    pids = _postmasters(shm / f"{locations.PREFIX}{os.geteuid()}", "*/instances/*")
    for pid in pids:
        os.kill(pid, signal.SIGQUIT)
    # gone before the user that ran them is deleted (userdel refuses a user with processes)
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=30, backoff=Backoff(0.02))


@pytest.fixture
def killed(shared: tuple[Path, Path], tmp_path: Path) -> Iterator[Killed]:
    """A server with two running instances (a child of the root branch and its child), SIGKILLed."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(home), *map(str, shared)],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        client = httpx.Client(base_url=info["api"], headers={"Authorization": f"Bearer {info['key']}"},
                              timeout=30)
        made = client.post(f"/projects/{info['project']}/branches",
                           json={"endpoints": [{"type": "read_write"}]}).json()
        wait_operations(client, info["project"], made["operations"])
        with psycopg.connect(made["connection_uris"][0]["connection_uri"]) as session:
            assert session.execute("SELECT 1").fetchone() == (1,)
            # the first fork suspended the root, which no client used; a fork of the
            # child, which this session uses, copies it live and leaves both running
            grandchild = client.post(f"/projects/{info['project']}/branches", json={
                "branch": {"parent_id": made["branch"]["id"]}, "endpoints": [{"type": "read_write"}]}).json()
            wait_operations(client, info["project"], grandchild["operations"])
        base = _base_of(shared[0], home)
        postmasters = _postmasters(base)
        assert len(postmasters) == 2, postmasters
    except BaseException:
        server.kill()
        _quit_all(shared[0])
        remove_home_user(home)
        raise
    server.kill()
    server.wait()
    try:
        yield Killed(home, base, postmasters)
    finally:  # what the test was to remove, when it failed
        _quit_all(shared[0])
        remove_home_user(home)


def _user_exists(home: Path) -> bool:
    try:
        pwd.getpwnam(home_user_name(home))
    except KeyError:
        return False
    return True


def test_orphans_stop_while_the_home_lives_and_go_with_it(killed: Killed, tmp_path: Path) -> None:
    assert all(pid_alive(pid) for pid in killed.postmasters)  # what SIGKILL leaves
    done = clean_leftovers(killed.home)
    assert not any(pid_alive(pid) for pid in killed.postmasters), done
    assert killed.base.is_dir(), done  # the home's branches are still its own
    assert _user_exists(killed.home) == (os.geteuid() == 0)

    shutil.rmtree(killed.home)
    done = clean_leftovers(tmp_path / "another-home")
    assert not killed.base.exists(), done
    assert not _user_exists(killed.home), done
    if os.geteuid() == 0:
        assert f"deleted the OS user {home_user_name(killed.home)} of {killed.home}" in done


def test_gc_all_stops_and_removes_instances_and_their_user(
    killed: Killed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_example(tmp_path / "project")
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(killed.home))
    code, out, err = cli("gc", "--all", "--dry-run", cwd=project)
    assert code == 0, err
    assert killed.base.is_dir() and all(pid_alive(pid) for pid in killed.postmasters), out
    code, out, err = cli("gc", "--all", cwd=project)
    assert code == 0, err
    assert not any(pid_alive(pid) for pid in killed.postmasters), out
    assert not killed.base.exists() and not killed.home.exists(), out
    assert f"removed {killed.base}" in out.splitlines()
    assert not _user_exists(killed.home), out
