"""Ctrl-C while the embedded server starts cold (issue 26, part 4): under `-n 2` the run
ends as interrupted and the start is undone before it does: no server, no PostgreSQL,
no in-memory files, no lock still held, no branch.

The server starts as a daemon in a session of its own (a terminal's Ctrl-C never reaches
it), so it is its starter that gives up on it (`cathouse_harness.local.launch._abandon`)
and the daemon that ends its start after the step it is in (`local.server.serve`)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cathouse_harness.local import locations
from cathouse_harness.local.discovery import discovery_path, log_path, running_server

from tests.plugin._support import home_of_its_own

BRANCH_TEST = """
def test_on_a_branch(neon_branch):
    assert neon_branch.id
"""


def _processes_naming(*needles: str) -> list[str]:
    """Command lines of running processes that name any of `needles` (the server's names
    its home; a PostgreSQL's names its data directory, under the home's hash)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in command for needle in needles):
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _held_locks(home: Path) -> list[Path]:
    held = []
    for path in home.rglob("*.lock"):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path)
        finally:
            os.close(fd)
    return held


def test_ctrl_c_during_a_cold_server_start_under_xdist_leaves_nothing(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with home_of_its_own(tmp_path, monkeypatch) as home:
        project.makepyfile(test_branch=BRANCH_TEST)
        tag = locations.short_hash(str(home.resolve()))
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider",
             "-q", "-n", "2"],
            cwd=project.path, env={**os.environ, "CATHOUSE_RUN_ID": "cold1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            # the start is under way once it makes the home's instances (its first step
            # with files of its own), and still is while nothing answers
            deadline = time.monotonic() + 120
            while not locations.shared_dirs_of(home):
                assert process.poll() is None, process.communicate()[0].decode()
                assert time.monotonic() < deadline, "the server's start never began"
                time.sleep(0.01)
            assert not discovery_path(home).exists(), "started before the Ctrl-C: not a cold start"
            sent = time.monotonic()
            os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: controller and workers
            out = process.communicate(timeout=120)[0].decode()
            took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == pytest.ExitCode.INTERRUPTED, out
        logged = log_path(home).read_text()
        stopped = [line for line in logged.splitlines() if "stopped while starting" in line]
        assert stopped, logged
        print(f"Ctrl-C during a cold server start under -n 2: the run ended {took:.2f} s later;"
              f" the server {stopped[0].partition('stopped ')[2]}")
        assert running_server(home) is None
        assert _processes_naming(str(home), tag) == []
        assert locations.shared_dirs_of(home) == []
        assert _held_locks(home) == []
        # the in-memory branches went with the server, and the sweep started none to look
        assert not discovery_path(home).exists()
        assert not (home / "runs" / "cold1").exists()
