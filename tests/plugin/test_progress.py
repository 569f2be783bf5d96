"""The live line while a session sets up (issue 26, part 4): on a terminal, one line
rewritten in place says what the setup waits for (here a template's slow revision),
and it is gone when the tests run; nothing of it anywhere else."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from pytest_cathouse_harness.progress import PREFIX, LiveLine

from tests.plugin._support import REPO, copy_example
from tests.reliability._cases import add_revision

SLOW_TEST = '''
def test_on_the_branch(neon_branch):
    assert neon_branch.id
'''


def _on_a_terminal(project: Path, *args: str) -> tuple[int, str]:
    """pytest in `project` with its output on a pseudo-terminal; its exit code and output."""
    primary, secondary = pty.openpty()
    # wide enough that no drawn line is cut
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", *args],
        cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
    )
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the other end closed (Linux answers EIO)
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    return process.wait(60), out.decode(errors="replace")


def test_a_slow_setup_shows_what_it_waits_for_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_example(tmp_path / "project")
    (project / "tests").mkdir()
    (project / "tests" / "test_slow.py").write_text(SLOW_TEST)
    add_revision(project, "51095109510a", "SELECT pg_sleep(2)", "a slow revision")
    monkeypatch.setenv("CATHOUSE_RUN_ID", "live-line")
    monkeypatch.setenv("CI", "true")
    code, out = _on_a_terminal(project, "tests/test_slow.py")
    assert code == 0, out
    drawn = [part.split("] ", 1)[-1] for part in out.split("\r\x1b[K") if part.startswith(PREFIX)]
    # the revision being applied, while it runs
    assert "migrating installation-service to 51095109510a (a slow revision)" in drawn, out
    # and what follows it (what came in the first second, as the template's create, may
    # not be drawn: the line waits a second before it shows)
    assert "forking harness/live-line/main" in drawn, out
    # cleared before pytest goes on: the test's result follows on the line it began
    last = out.rindex(PREFIX)
    assert "\r\x1b[K" in out[last:] and "1 passed" in out[last:], out


MAPPING = '\n[tool.cathouse_harness.env]\nAPP_DATABASE_URL = "{url}"\n'


@pytest.mark.parametrize("xdist", [False, True], ids=["one process", "-n 2"])
def test_the_branch_made_before_the_conftests_shows_its_steps_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdist: bool
) -> None:
    """With an env mapping the branch is made before the conftests load, its migrations
    in a process of their own (under xdist, by the controller's broker): the child's
    revisions reach the same line, which is gone before pytest's header."""
    project = copy_example(tmp_path / "project")
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + MAPPING)
    (project / "tests").mkdir()
    (project / "tests" / "test_slow.py").write_text(SLOW_TEST)
    revision = "5109510951a2" if xdist else "5109510951a1"  # each run builds its template
    add_revision(project, revision, "SELECT pg_sleep(2)", "a slow revision")
    run_id = "live-early-n2" if xdist else "live-early"
    monkeypatch.setenv("CATHOUSE_RUN_ID", run_id)
    monkeypatch.setenv("CI", "true")
    code, out = _on_a_terminal(project, *(["-n", "2"] if xdist else []), "tests/test_slow.py")
    assert code == 0, out
    drawn = [part.split("] ", 1)[-1] for part in out.split("\r\x1b[K") if part.startswith(PREFIX)]
    assert f"migrating installation-service to {revision} (a slow revision)" in drawn, out
    fork = f"forking harness/{run_id}/workers" if xdist else f"forking harness/{run_id}/main"
    assert fork in drawn, out
    # cleared before pytest's header, and never drawn again once the tests run
    header = out.index("test session starts")
    assert "\r\x1b[K" in out[out.rindex(f"{PREFIX}[", 0, header):header], out
    assert f"{PREFIX}[" not in out[header:], out


def test_the_line_is_drawn_after_a_second_and_cleared(tmp_path: Path) -> None:
    read, write = os.pipe()
    line = LiveLine(write, 80, show_after=0.3)
    line("fast step")
    line(None)  # done before it was worth showing: nothing drawn
    line("slow step")
    time.sleep(0.7)  # the clock draws the line once 0.3 s have passed
    line("next step")
    line(None)
    line.close()
    with os.fdopen(read, "rb") as pipe:
        shown = pipe.read().decode()
    assert "fast step" not in shown
    assert re.search(rf"\r\x1b\[K{PREFIX}\[\d+ s\] slow step", shown), shown
    assert re.search(rf"\r\x1b\[K{PREFIX}\[\d+ s\] next step", shown), shown
    assert shown.endswith("\r\x1b[K")  # cleared


def test_no_terminal_no_line() -> None:
    line = LiveLine(None)
    line("anything")  # a pipe or a file: nothing is written, nothing fails
    line(None)
    line.close()
