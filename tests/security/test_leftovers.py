"""Item 11: what runs and servers leave behind is cleaned when a server starts (and by
`cathouse_harness.cleanup.leftovers.clean_leftovers`, which `cathouse-branch gc` is to call).

Left behind before: run directories and `kept-*` markers of finished runs, a PostgreSQL
(and PgBouncer) still running after its server was SIGKILLed, the /dev/shm cluster of a
home that no longer exists, half-made `initdb-*.tmp-<pid>` copies in /var/tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cathouse_harness.cleanup.leftovers import clean_leftovers
from cathouse_harness.cleanup.runs import owner_token
from cathouse_harness.local import locations
from cathouse_harness.local.compute.layout import memory_bases
from cathouse_harness.local.server import ensure_local_server


def _dead_pid() -> int:
    done = subprocess.run(["true"], check=True)
    assert done.returncode == 0
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def _postmaster_pid(root: Path) -> int:
    return int((root / "data" / "postmaster.pid").read_text().split()[0])


def _pgbouncer_pid(root: Path) -> int | None:
    try:
        return int((root / "pgbouncer" / "pgbouncer.pid").read_text().strip())
    except OSError:
        return None


def test_finished_runs_and_half_made_copies_are_removed_at_server_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    runs = home / "runs"
    dead, live = f"{_dead_pid()}-0123456789ab", owner_token()
    (runs / "finished" / dead / "gw0").mkdir(parents=True)
    (runs / "finished" / dead / "kept-br-kept-for-a-look").write_text("harness/finished/gw0")
    (runs / "still-deleting" / dead / "gw0").mkdir(parents=True)
    (runs / "still-deleting" / dead / "gw0" / "br-watchdog-at-work").write_text("{}")
    (runs / "running" / live / "gw0").mkdir(parents=True)
    (runs / "empty-old-layout").mkdir(parents=True)
    home.chmod(0o700)
    var_tmp = tmp_path / "var-tmp"
    var_tmp.mkdir()
    var_tmp.chmod(0o1777)
    monkeypatch.setattr(locations, "VAR_TMP_DIR", var_tmp)
    base = locations.per_user_dir(var_tmp, switch=os.geteuid() == 0)
    half_made = base / f"initdb-0f0f0f0f0f0f.tmp-{_dead_pid()}"
    in_progress = base / f"initdb-0f0f0f0f0f0f.tmp-{os.getpid()}"
    half_made.mkdir()
    in_progress.mkdir()

    done = clean_leftovers(home)

    assert not (runs / "finished").exists() and not (runs / "empty-old-layout").exists(), done
    assert (runs / "still-deleting" / dead / "gw0" / "br-watchdog-at-work").exists()
    assert (runs / "running" / live / "gw0").is_dir()
    assert not half_made.exists() and in_progress.exists(), done


def test_server_start_runs_the_cleaner(tmp_path: Path) -> None:
    home = tmp_path / "home"
    finished = home / "runs" / "finished" / f"{_dead_pid()}-0123456789ab"
    finished.mkdir(parents=True)
    (finished / "kept-br-kept-for-a-look").write_text("harness/finished/main")
    home.chmod(0o700)
    try:
        ensure_local_server(home)
        _wait_until(lambda: not (home / "runs" / "finished").exists(), "the server's start cleaned runs/")
    finally:
        from cathouse_harness.local.server import stop_local_server

        stop_local_server(home)
        for directory in memory_bases(home):
            shutil.rmtree(directory, ignore_errors=True)
