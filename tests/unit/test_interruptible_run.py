"""`compute.instance.run_as(..., interruptible=True)`: what a server's stopped start kills
instead of waiting out (the template's initdb). `support.interrupt.stop_all` ends the
command and what it started in its session; a command nobody stops runs as before."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cathouse_harness.local.compute.instance import run_as
from cathouse_harness.local.pg_binaries import OsUser
from cathouse_harness.support.interrupt import running, stop_all
from cathouse_harness.support.processes import pid_alive

ME = OsUser("me", os.geteuid(), os.getegid(), switch=False)
# a child of its own in the background, as initdb has its postgres --boot
SLEEPER = "sleep 30 & echo $! > child.tmp && mv child.tmp child; wait"


def test_stop_all_kills_an_interruptible_command_and_its_children(tmp_path: Path) -> None:
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(run_as(ME, ["sh", "-c", SLEEPER], cwd=tmp_path, interruptible=True)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "child").exists():
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    child = int((tmp_path / "child").read_text())
    assert stop_all(wait=0) == 1
    thread.join(30)
    assert not thread.is_alive()
    (result,) = results
    assert result.returncode == -9  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:  # reaped by init, not at once
        time.sleep(0.01)
    assert not pid_alive(child)
    assert running() == 0


def test_an_interruptible_command_nobody_stops_runs_as_before(tmp_path: Path) -> None:
    result = run_as(ME, ["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=tmp_path, interruptible=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert running() == 0
