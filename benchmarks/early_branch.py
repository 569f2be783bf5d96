"""What making the branch before the conftests load costs a warm session.

    python benchmarks/early_branch.py [--reps 9]

One copy of the example project, template built and server up, is run as `python -m
pytest -p cathouse_harness` in a fresh process, in turns, three ways:

- "fixture": no `[tool.cathouse_harness.env]`; the one test asks for `neon_branch`, so
  the branch is made when the fixture is first set up (how every run worked before #23);
- "early": the same project with an env mapping, so the branch is made in
  `pytest_load_initial_conftests` and the mapped names point at it before the conftests
  are imported; the test asks for `neon_branch` too;
- "fixture again": the first command once more; its ratio to "fixture" is the noise floor,
  what two identical commands differ by on this machine today.

Each run's test writes the wall-clock time at which it starts; the figure is spawn → that
moment (the whole start of pytest, plugin, branch and collection). Medians of the runs,
and the ratios early / fixture and fixture again / fixture, are printed. Issue #23's
target: early within the noise of fixture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
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

SIDES = ("fixture", "early", "fixture again")

TEST = """
import os
import time


def test_first(neon_branch):
    with open(os.environ["BENCH_STARTED_FILE"], "w") as out:
        out.write(repr(time.time()))
"""

MAPPING = """
[tool.cathouse_harness.env]
APP_DATABASE_HOST = "{host}"
APP_DATABASE_URL = "{url}"
"""


def project(root: Path, name: str, *, mapping: bool) -> Path:
    where = root / name
    shutil.copytree(
        EXAMPLE, where, ignore=shutil.ignore_patterns("tests", ".env", "__pycache__", ".pytest_cache")
    )
    (where / "test_first.py").write_text(TEST)
    if mapping:
        pyproject = where / "pyproject.toml"
        pyproject.write_text(pyproject.read_text() + MAPPING)
    return where


def one_run(directory: Path, home: Path, run_id: str) -> float:
    started_file = directory / "started.txt"
    started_file.unlink(missing_ok=True)
    env = child_env(home, CI="true", CATHOUSE_RUN_ID=run_id, BENCH_STARTED_FILE=str(started_file))
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=directory, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{directory.name}: pytest exited {done.returncode}\n{done.stdout[-2000:]}")
    return float(started_file.read_text()) - spawned


def measure(reps: int) -> dict[str, Any]:
    """The three sides' medians (seconds) and the two ratios, on a home of its own."""
    with tempfile.TemporaryDirectory(prefix="bench-early-") as directory:
        root = Path(directory)
        home = root / "home"
        home.mkdir(mode=0o700)
        projects = {
            "fixture": project(root, "fixture", mapping=False),
            "early": project(root, "early", mapping=True),
        }
        projects["fixture again"] = projects["fixture"]
        try:
            for name in ("fixture", "early"):  # server up, template built: warm from here
                one_run(projects[name], home, f"bench-prime-{name}")
            counter = iter(range(10_000))
            medians = interleaved(
                list(SIDES), reps,
                lambda side: one_run(projects[side], home, f"bench-early-{next(counter)}"),
            )
        finally:
            stop_home(home)
    ratios = {
        "early_vs_fixture": medians["early"] / medians["fixture"],
        "noise_floor": medians["fixture again"] / medians["fixture"],
    }
    return {"medians": medians, "ratios": ratios, "reps": reps}


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The figures a results file keeps (`write_results`)."""
    medians, ratios = result["medians"], result["ratios"]
    return [
        ["spawn → first test, branch at the fixture (warm)", fmt(medians["fixture"]),
         f"median of {result['reps']}"],
        ["spawn → first test, branch before the conftests (env mapping)", fmt(medians["early"]),
         f"{ratios['early_vs_fixture']:.3f}x at the fixture; noise floor {ratios['noise_floor']:.3f}"],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    add_results_option(parser, "early_branch")
    args = parser.parse_args()
    began = time.perf_counter()
    compile_bytecode()
    result = measure(args.reps)
    if args.results:
        print(f"results: {write_results('early_branch', result, rows(result), began, reps=args.reps)}")
    if args.json:
        print(json.dumps(result))
        return 0
    medians, ratios = result["medians"], result["ratios"]
    for side in SIDES:
        print(f"{side:>14}: spawn → first test {fmt(medians[side])} (median of {args.reps})")
    print(f"early / fixture {ratios['early_vs_fixture']:.3f}; "
          f"noise floor (fixture again / fixture) {ratios['noise_floor']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
