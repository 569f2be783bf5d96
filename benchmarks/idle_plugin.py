"""What the installed plugin costs a project that does not use it.

    python benchmarks/idle_plugin.py [--reps 15] [--tests 40]

A small project with no `[tool.cathouse_harness]` and no harness fixture (plain tests,
`tmp_path` at most) is run as `python -m pytest` in a fresh process, in turns: with the
plugin loaded the way a user gets it (the pytest11 entry point, autoload) and with it
blocked (`-p no:cathouse_harness`, so not one module of ours is imported). The medians of
the two walls, their difference and their ratio (enabled / disabled) are printed, and the
same for the processes' CPU time (user + system), which a machine shared with other work
disturbs less than the wall; the difference is the plugin's whole cost there (its
imports, options, hooks on every test). A third side runs the disabled command again:
its ratio to the first is the noise floor, what a ratio of two identical commands looks
like on this machine today. Then the part of it that does not depend on the tests: the
CPU time of importing the plugin in a fresh process that has pytest loaded already.
Each side must say whether it loaded the plugin, so a ratio of 1 cannot come from a
plugin that was never found.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import add_results_option, compile_bytecode, fmt, interleaved, summary, write_results

SIDES = ("enabled", "disabled", "disabled again")

# Not a word of the harness: what any project's tests look like to the plugin.
TESTS = '''
import pytest


@pytest.mark.parametrize("n", range({count}))
def test_arithmetic(n):
    assert n + n == 2 * n


def test_tmp_path(tmp_path):
    (tmp_path / "x").write_text("x")
    assert (tmp_path / "x").read_text() == "x"
'''

# Tells which side ran: the test process's own plugin list, written where the benchmark
# reads it once per side (the timed runs leave it alone).
CHECK = '''
import json
import os


def test_which_plugins(request):
    path = os.environ.get("IDLE_BENCH_REPORT")
    if path:
        loaded = request.config.pluginmanager.has_plugin("cathouse_harness")
        with open(path, "w") as out:
            json.dump({"loaded": loaded}, out)
'''

PYPROJECT = """[project]
name = "plain-project"
version = "0"

[tool.pytest.ini_options]
asyncio_default_fixture_loop_scope = "function"
"""


def make_project(root: Path, tests: int) -> Path:
    project = root / "plain-project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "tests" / "test_plain.py").write_text(TESTS.format(count=tests))
    (project / "tests" / "test_which.py").write_text(CHECK)
    return project


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The machine's environment less what would change the plugin's mind: no key, no
    harness settings, autoload on; a home of its own that must stay empty."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CATHOUSE_", "NEON_", "PYTEST_")) and k not in ("DATABASE_URL",)
    }
    env["CATHOUSE_HARNESS_HOME"] = str(home)
    env.update(extra)
    return env


def _command(side: str) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return command + (["-p", "no:cathouse_harness"] if side.startswith("disabled") else [])


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(project: Path, home: Path, side: str, **extra: str) -> tuple[float, float]:
    """One run's wall and CPU time (the child's user + system, waited for)."""
    cpu, started = _cpu_of_children(), time.perf_counter()
    done = subprocess.run(
        _command(side), cwd=project, env=_env(home, **extra), capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - started, _cpu_of_children() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"pytest ({side}) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall, cpu


def check_sides(project: Path, home: Path, root: Path) -> dict[str, bool]:
    """Whether each side loaded the plugin; stops the benchmark if a side is not what it
    says (the plugin not installed, or not blocked)."""
    loaded: dict[str, bool] = {}
    for side in SIDES:
        report = root / f"which-{side}.json"
        _run(project, home, side, IDLE_BENCH_REPORT=str(report))
        loaded[side] = bool(json.loads(report.read_text())["loaded"])
    if loaded != {"enabled": True, "disabled": False, "disabled again": False}:
        raise RuntimeError(
            f"the sides are not what they say (plugin loaded: {loaded}); is cathouse-harness "
            "installed in this interpreter (pip install -e .)?"
        )
    return loaded


# pytest and the plugins it loads anyway come first: what is timed is ours alone
IMPORT_PLUGIN = """
import time
import pytest, pytest_asyncio.plugin, xdist.plugin
started = time.process_time()
import pytest_cathouse_harness.plugin
print(time.process_time() - started)
"""


def import_cost(reps: int) -> dict[str, Any]:
    """CPU time of importing the plugin (and the engine modules it needs) in a fresh
    process, `reps` times."""
    times = []
    for _ in range(reps):
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_PLUGIN], capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout.strip()))
    return summary(times)


def measure(root: Path, reps: int, tests: int = 40) -> dict[str, Any]:
    home = root / "idle-home"
    home.mkdir(mode=0o700)
    project = make_project(root, tests)
    check_sides(project, home, root)
    _run(project, home, "enabled")  # bytecode of the project's tests, both sides alike
    cpus: dict[str, list[float]] = {side: [] for side in SIDES}

    def one(side: str) -> float:
        wall, cpu = _run(project, home, side)
        cpus[side].append(cpu)
        return wall

    walls = interleaved(list(SIDES), reps, one)
    cpu = {side: statistics.median(values) for side, values in cpus.items()}
    left = sorted(p.name for p in home.iterdir())
    return {
        "tests": tests + 2,
        "wall": walls,
        "cpu": cpu,
        "cpu_runs": {side: summary(values) for side, values in cpus.items()},
        "added_wall": walls["enabled"] - walls["disabled"],
        "ratio_wall": walls["enabled"] / walls["disabled"],
        "added_cpu": cpu["enabled"] - cpu["disabled"],
        "ratio_cpu": cpu["enabled"] / cpu["disabled"],
        "floor_wall": walls["disabled again"] / walls["disabled"],
        "floor_cpu": cpu["disabled again"] / cpu["disabled"],
        "import_cpu": import_cost(reps),
        # anything here means the plugin touched the home of a project that never asked
        "home_left": left,
    }


def print_result(result: dict[str, Any]) -> None:
    print(f"idle plugin: `python -m pytest`, {result['tests']} plain tests, no [tool.cathouse_harness]")
    print("  median of each side                wall         CPU (user + system)")
    labels = {
        "enabled": "enabled (autoload)", "disabled": "disabled (-p no:…)", "disabled again": "disabled, again"
    }
    for side, label in labels.items():
        print(f"  plugin {label:<27} {fmt(result['wall'][side]):<12} {fmt(result['cpu'][side])}")
    print(f"  added by the plugin                {fmt(result['added_wall']):<12} {fmt(result['added_cpu'])}")
    print(f"  ratio enabled / disabled           {result['ratio_wall']:<12.3f} {result['ratio_cpu']:.3f}")
    print(f"  noise floor (disabled again / disabled) {result['floor_wall']:<7.3f} {result['floor_cpu']:.3f}")
    print(f"  importing the plugin, fresh process              {fmt(result['import_cpu']['median'])}")
    print(f"  files left in the home             {len(result['home_left'])} {result['home_left'] or ''}")


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The figures a results file keeps (`write_results`), as docs/performance.md shows them."""
    what = f"`python -m pytest`, {result['tests']} plain tests, no [tool.cathouse_harness]"
    return [
        ["idle plugin: added to the run (wall)", fmt(result["added_wall"]),
         f"{what}; enabled / disabled {result['ratio_wall']:.3f}, noise floor {result['floor_wall']:.3f}"],
        ["idle plugin: added to the run (CPU)", fmt(result["added_cpu"]),
         f"enabled / disabled {result['ratio_cpu']:.3f}, noise floor {result['floor_cpu']:.3f}"],
        ["idle plugin: importing it (fresh process, CPU)", fmt(result["import_cpu"]["median"]),
         f"files left in the home: {len(result['home_left'])}"],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--tests", type=int, default=40)
    add_results_option(parser, "idle_plugin")
    args = parser.parse_args()
    began = time.perf_counter()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as root:
        result = measure(Path(root), args.reps, args.tests)
    print_result(result)
    print(json.dumps(result, indent=1))
    if args.results:
        path = write_results("idle_plugin", result, rows(result), began, reps=args.reps, tests=args.tests)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
