"""How long Ctrl-C takes to end a `pytest -n 2` run, against xdist's own Ctrl-C.

    python benchmarks/interrupt.py [--reps 3] [--results]

Each side starts `pytest -n 2` in a session of its own, waits until the run is busy, then
sends SIGINT to the whole process group (what a terminal's Ctrl-C does) and times the
exit:

- `xdist alone`: a project without the harness (`-p no:cathouse_harness`) whose test
  sleeps; what any Ctrl-C under xdist costs on this machine, the baseline;
- `at the fixture`: the Cat House example whose template build runs a slow revision
  (`pg_sleep(60)`), interrupted inside that statement;
- `before the conftests`: the same with an env mapping, the branch made in
  `pytest_load_initial_conftests`, its migration in a process of its own;
- `cold start`: the example on a fresh home of its own, interrupted while its local server
  starts (once that start has made the home's cluster or instances, before it answers);
  the run must end with nothing of the server left (no process, no files in the shared
  places), else the benchmark fails.

Also timed, from the exit: until the run's branches are gone (the run's own teardown or
the watchdog) — what a later `cathouse-branch list` would still show. The sides run in
turns (the warm ones on one home), so the ratios hold on a busy machine; the absolute
times do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    EXAMPLE,
    add_results_option,
    child_env,
    compile_bytecode,
    fmt,
    interleaved,
    stop_home,
    write_results,
)

SIDES = ("xdist alone", "at the fixture", "before the conftests", "cold start")
WARM = SIDES[1:3]
SLEEP = 60

SLEEPING_TEST = f'''
import os
import pathlib
import time


def test_sleeps():
    pathlib.Path(os.environ["BENCH_BUSY_FILE"]).write_text("busy")
    time.sleep({SLEEP})
'''

BRANCH_TEST = '''
def test_on_the_branch(neon_branch):
    assert neon_branch.id
'''

# the slow revision says when its statement begins, so the run is interrupted inside it
SLOW_REVISION = f'''
"""a slow revision

Revision ID: 1e7e1e7e1e7e
Revises: 7d1b5f8a3e64
"""

import os
import pathlib

from alembic import op

revision = "1e7e1e7e1e7e"
down_revision = "7d1b5f8a3e64"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pathlib.Path(os.environ["BENCH_BUSY_FILE"]).write_text("busy")
    op.execute("SELECT pg_sleep({SLEEP})")


def downgrade() -> None:
    pass
'''

MAPPING = '\n[tool.cathouse_harness.env]\nAPP_DATABASE_URL = "{url}"\n'


def projects(root: Path) -> dict[str, Path]:
    bare = root / "bare"
    bare.mkdir()
    (bare / "test_sleep.py").write_text(SLEEPING_TEST)
    made = {"xdist alone": bare}
    cold = root / "cold-start"
    shutil.copytree(EXAMPLE, cold, ignore=shutil.ignore_patterns(
        "tests", ".env", "__pycache__", ".pytest_cache"))
    (cold / "tests").mkdir()
    (cold / "tests" / "test_branch.py").write_text(BRANCH_TEST)
    made["cold start"] = cold
    for side in WARM:
        where = root / side.replace(" ", "-")
        shutil.copytree(EXAMPLE, where, ignore=shutil.ignore_patterns(
            "tests", ".env", "__pycache__", ".pytest_cache"))
        (where / "tests").mkdir()
        (where / "tests" / "test_branch.py").write_text(BRANCH_TEST)  # the example's testpaths
        versions = where / "installation-service" / "alembic" / "versions"
        (versions / "1e7e1e7e1e7e_slow.py").write_text(SLOW_REVISION)
        if side == "before the conftests":
            pyproject = where / "pyproject.toml"
            pyproject.write_text(pyproject.read_text() + MAPPING)
        made[side] = where
    return made


def run_branches(home: Path, run_id: str) -> list[str]:
    """Branches of `run_id` on the home's local server (plain HTTP, not the harness's client)."""
    import httpx
    from cathouse_harness.branching.lifecycle import MARK_RUN
    from cathouse_harness.local.server import ensure_local_server

    info = ensure_local_server(home, database="cathouse", role="cathouse_owner")
    headers = {"Authorization": f"Bearer {info.api_key.reveal()}"}
    data = httpx.get(f"{info.api_host}/projects/{info.project_id}/branches", headers=headers,
                     timeout=30).json()
    notes = data.get("annotations") or {}
    return [str(b["name"]) for b in data["branches"]
            if ((notes.get(b["id"]) or {}).get("value") or {}).get(MARK_RUN) == run_id]


def interrupted(side: str, directory: Path, env: dict[str, str], plugin: list[str],
                busy: Callable[[], bool], pause: float) -> float:
    """`pytest -n 2` in `directory`, Ctrl-C to its process group `pause` s after `busy()`
    held; the seconds until it exited (as interrupted, else the benchmark fails)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-q", "-n", "2"],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not busy():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{side}: never got busy\n{process.communicate()[0][-3000:]}")
            time.sleep(0.01)
        time.sleep(pause)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=SLEEP)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 2:
        raise SystemExit(f"{side}: pytest exited {process.returncode}, not 2\n{out[-3000:]}")
    return took


def cold_run(directory: Path, home: Path, run_id: str) -> float:
    """Ctrl-C while `home`'s server starts (it has made the home's cluster or instances
    and does not answer yet); fails when the server or its files outlive the run."""
    from cathouse_harness.local.discovery import running_server
    from cathouse_harness.local.locations import shared_dirs_of

    home.mkdir(mode=0o700)
    env = child_env(home, CI="true", CATHOUSE_RUN_ID=run_id)
    took = interrupted("cold start", directory, env, ["-p", "cathouse_harness"],
                       lambda: bool(shared_dirs_of(home)), 0)
    left = shared_dirs_of(home)
    if running_server(home) is not None or left:
        stop_home(home)
        raise SystemExit(f"cold start: the server or its files outlived the run: {left}")
    logged = (home / "local-server.log").read_text()
    if "stopped while starting" not in logged:
        raise SystemExit(f"cold start: the server was not stopped while starting:\n{logged}")
    return took


def one_run(side: str, directory: Path, home: Path, run_id: str, timings: dict[str, list[float]]) -> float:
    busy = directory / "busy.txt"
    busy.unlink(missing_ok=True)
    harness = side != "xdist alone"
    plugin = ["-p", "cathouse_harness"] if harness else ["-p", "no:cathouse_harness"]
    env = child_env(home, CI="true", CATHOUSE_RUN_ID=run_id, BENCH_BUSY_FILE=str(busy))
    # inside the statement (or the sleep), not at its first instant
    took = interrupted(side, directory, env, plugin, busy.exists, 0.3)
    if harness:
        ended = time.monotonic()
        while run_branches(home, run_id):
            if time.monotonic() - ended > 60:
                raise SystemExit(f"{side}: the run's branches outlived it by a minute")
            time.sleep(0.05)
        timings.setdefault(side, []).append(time.monotonic() - ended)
    return took


def measure(reps: int) -> dict[str, Any]:
    """Each side's median exit time after SIGINT, the ratios to `xdist alone`, and the
    median time the run's branches outlived it."""
    with tempfile.TemporaryDirectory(prefix="bench-interrupt-") as directory:
        root = Path(directory)
        home = root / "home"
        home.mkdir(mode=0o700)
        made = projects(root)
        leftovers: dict[str, list[float]] = {}
        counter = iter(range(10_000))
        try:
            run_branches(home, "none")  # the server up before the first side
            def measure_side(side: str) -> float:
                run_id = f"bench-int-{next(counter)}"
                if side == "cold start":
                    return cold_run(made[side], root / run_id, run_id)
                return one_run(side, made[side], home, run_id, leftovers)

            medians = interleaved(list(SIDES), reps, measure_side)
        finally:
            stop_home(home)
    baseline = medians["xdist alone"]
    return {
        "reps": reps,
        "medians": medians,
        "ratios": {side: medians[side] / baseline for side in SIDES[1:]},
        "branches_gone_after": {side: sorted(v)[len(v) // 2] for side, v in leftovers.items()},
        "load_average": os.getloadavg()[0],
    }


def rows(result: dict[str, Any]) -> list[list[str]]:
    medians, ratios, gone = result["medians"], result["ratios"], result["branches_gone_after"]
    table = [["Ctrl-C under -n 2: xdist alone (a sleeping test)", fmt(medians["xdist alone"]), "baseline"]]
    for side in WARM:
        table.append([f"Ctrl-C under -n 2: branch {side}, in a slow migration", fmt(medians[side]),
                      f"{ratios[side]:.2f}x xdist alone; the run's branches gone {fmt(gone[side])} later"])
    table.append(["Ctrl-C under -n 2: during a cold server start", fmt(medians["cold start"]),
                  f"{ratios['cold start']:.2f}x xdist alone; no server, PostgreSQL or cluster left"])
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    add_results_option(parser, "interrupt")
    args = parser.parse_args()
    began = time.perf_counter()
    compile_bytecode()
    result = measure(args.reps)
    table = rows(result)
    for measure_, value, note in table:
        print(f"{measure_}: {value} ({note})")
    print(f"load average at the end: {result['load_average']:.1f}; medians of {args.reps}")
    if args.results:
        print(f"results: {write_results('interrupt', result, table, began, reps=args.reps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
