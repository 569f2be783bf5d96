"""What a test session costs, measured against the alternatives, in one run.

    python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json] [--no-plot]

Everything runs on the embedded default with temporary homes (never ~/.cache), and in
one process (subprocesses where a fresh process is the thing measured), so the ratios
hold on a noisy machine. Sections:

- cold session: fresh home, no server, no template; a fresh process (`_probe.py`) until
  the branch is usable, then teardown;
- warm session: template reused, server up; a fresh process, timed from before the
  harness's plugin is imported, pytest already loaded (`import_to_ready`, what the
  harness adds to a test run; see `_probe.py`) and from spawn (`spawn_to_ready`);
- hot session: `BranchSession` repeated in this process (server up, template reused);
- API latency: per-worker fork and create/delete through the API next to the raw
  copy + start of an instance and its stop + removal (`api_latency`'s floor);
- per-test isolation: db_session's work vs reset branch vs fresh branch per test;
- scaling: real `pytest -p cathouse_harness -n N` subprocesses (N = 1, 2, 4) on a copy
  of examples/cathouse whose tests are 8 trivial tests using `neon_branch`, next to the
  same tests without the fixture; API calls read from the plugin's summary;
- synthetic projects: 3/6/12 services x 10/100 revisions: template build (cold
  migration, fresh process, no bytecode) and the next session (template reused);
- naive baseline: a fresh database per session on a plain PostgreSQL and each
  service's `alembic upgrade head` as its own process, in order;
- branch before the conftests: `early_branch.measure`, spawn → first test of a warm
  session whose branch is made in pytest_load_initial_conftests (an env mapping) against
  the same project whose branch is made at the fixture, in turns, with a noise floor;
- idle plugin: `idle_plugin.measure`, a project without the harness run with the plugin
  autoloaded and with it blocked (`-p no:cathouse_harness`), in turns;
- at Neon's latencies: `neon_profile.measure` (cold, warm, -n 1/-n 4, naive) with the
  local server under `CATHOUSE_LOCAL_LATENCY=neon`;
- a PostgreSQL per branch: `instance_plane.measure`:
  warm session, per-worker fork and fork → first query against the pg_ctl floor, the
  first and next pooled query (PgBouncer per instance), one idle instance's memory and
  20 live branches' (5 with --quick), a fork while they run.

The package's and the example's bytecode is written first (see `compile_bytecode`), as
an installed package has it, even where PYTHONDONTWRITEBYTECODE is set.

Output: a table on stdout, every figure in the JSON file, a PNG next to it when
matplotlib is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import api_latency
import early_branch
import idle_plugin
import instance_plane
import neon_profile
import per_test_branch
import session_overhead
from _common import (
    EXAMPLE,
    REPO,
    alembic_each,
    bench_plane,
    child_env,
    compile_bytecode,
    fmt,
    home_env,
    probe,
    stop_home,
    summary,
)

RESULTS = REPO / "benchmarks" / "results"


# ---------------------------------------------------------------------- sessions in a fresh process


def sessions(probes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "spawn_to_ready": summary([p["spawn_to_ready"] for p in probes]),
        "import_to_ready": summary([p["import_to_ready"] for p in probes]),
        "teardown": summary([p["teardown"] for p in probes]),
        "migrate": summary([p["timings"].get("migrate", 0.0) for p in probes]),
        "api_calls": max(p["api_calls"] for p in probes),
        "template_reused": [p["template_reused"] for p in probes],
    }


# ---------------------------------------------------------------------- the naive baseline


def naive(home: Path, project: Path, reps: int) -> dict[str, Any]:
    """Fresh database + one `alembic upgrade head` process per service, in order, on a
    plain PostgreSQL (`_common.PlainPostgres`, the suite's tests/_cluster.py: what a
    project without the harness runs its tests on) as a password role of its own over
    127.0.0.1. The server is this section's own, in a directory of `home`'s."""
    from cathouse_harness.config.settings import load_settings

    with home_env(home):
        settings = load_settings(project)
    role = "naive_bench"
    loop, plane, secret = bench_plane(home / "naive-postgres", role)
    setups: list[float] = []
    drops: list[float] = []
    try:
        for _ in range(reps):
            name = f"naive_{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            loop.run(plane.create_database(name, owner=role))
            url = f"postgresql://{role}:{secret}@127.0.0.1:{plane.cluster.port}/{name}"
            alembic_each(home, settings, url)
            setups.append(time.perf_counter() - started)
            started = time.perf_counter()
            loop.run(plane.drop_database(name))
            drops.append(time.perf_counter() - started)
    finally:
        loop.run(plane.stop())
        loop.close()
    return {"setup": summary(setups), "teardown": summary(drops)}


# ---------------------------------------------------------------------- xdist scaling


TRIVIAL = """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_branch(n, {fixture}):
    pass
"""


def scaling(home: Path, root: Path, workers: list[int], reps: int) -> dict[str, Any]:
    """Wall of `pytest -n N` with and without the harness's fixture. The two kinds run
    in turn (plain, harness, harness, plain, …), each on a project of its own, so a
    machine whose load drifts (a shared CI runner) weighs on both alike."""
    projects: dict[str, Path] = {}
    for kind, fixture in (("plain", "tmp_path"), ("harness", "neon_branch")):
        project = projects[kind] = root / f"xdist-{kind}"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".env", "tests"))
        (project / "tests").mkdir()
        (project / "tests" / "test_trivial.py").write_text(TRIVIAL.format(fixture=fixture))
    rows: dict[str, Any] = {}
    for n in workers:
        walls: dict[str, list[float]] = {"harness": [], "plain": []}
        calls: list[int] = []
        for rep in range(reps):
            for kind in ("plain", "harness") if rep % 2 == 0 else ("harness", "plain"):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-p", "cathouse_harness",
                     "-p", "no:cacheprovider", "-q", "-n", str(n)],
                    cwd=projects[kind],
                    env=child_env(home, CATHOUSE_RUN_ID=f"bench-x{n}-{uuid.uuid4().hex[:6]}"),
                    capture_output=True,
                    text=True,
                )
                walls[kind].append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise RuntimeError(f"pytest -n {n} failed: {done.stdout[-2000:]}")
                if kind == "harness":
                    found = re.search(r"API calls (\d+)", done.stdout)
                    calls.append(int(found.group(1)) if found else -1)
        harness, plain = summary(walls["harness"]), summary(walls["plain"])
        rows[str(n)] = {
            "wall_with_harness": harness,
            "wall_without": plain,
            "overhead": harness["median"] - plain["median"],
            "api_calls": max(calls),
            "api_calls_per_worker": max(calls) / n,
        }
    return rows


# ---------------------------------------------------------------------- synthetic projects


MODELS = """\
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
"""


def synthetic_project(root: Path, services: int, revisions: int) -> Path:
    """`services` services, each a linear Alembic history of `revisions` revisions
    (a table, then alternately a column and an index), on the example's shared env."""
    project = root / f"synthetic-{services}x{revisions}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(
        EXAMPLE / "cathouse_common", project / "cathouse_common", ignore=shutil.ignore_patterns("__pycache__")
    )
    lines = [
        "[tool.cathouse_harness]",
        'parent_branch = "main"',
        'database = "cathouse"',
        'role = "cathouse_owner"',
        "connection_limit = 100",
        'migration_sources = ["cathouse_common/alembic_env.py"]',
        "",
    ]
    for index in range(services):
        schema = f"svc{index}"
        service = project / f"{schema}-service"
        (service / "app").mkdir(parents=True)
        (service / "app" / "models.py").write_text(MODELS)
        shutil.copy(EXAMPLE / "auth-service" / "alembic.ini", service / "alembic.ini")
        versions = service / "alembic" / "versions"
        versions.mkdir(parents=True)
        shutil.copy(EXAMPLE / "auth-service" / "alembic" / "script.py.mako", service / "alembic")
        (service / "alembic" / "env.py").write_text(
            textwrap.dedent(f'''\
            import runpy
            from pathlib import Path

            SERVICE_DIR = Path(__file__).resolve().parents[1]
            shared = runpy.run_path(str(SERVICE_DIR.parent / "cathouse_common" / "alembic_env.py"))
            shared["run_migrations"](schema="{schema}", models=SERVICE_DIR / "app" / "models.py")
            ''')
        )
        down = None
        for n in range(revisions):
            rev = f"{schema}r{n:04d}"
            if n == 0:
                body = (
                    f'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), schema="{schema}")'
                )
                undo = f'op.drop_table("t", schema="{schema}")'
            elif n % 2:
                body = f'op.add_column("t", sa.Column("c{n}", sa.Integer), schema="{schema}")'
                undo = f'op.drop_column("t", "c{n}", schema="{schema}")'
            else:
                body = f'op.create_index("ix_t_c{n - 1}", "t", ["c{n - 1}"], schema="{schema}")'
                undo = f'op.drop_index("ix_t_c{n - 1}", table_name="t", schema="{schema}")'
            (versions / f"{rev}_step.py").write_text(
                f'"""step {n}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
                f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
                f"depends_on = None\n\n\ndef upgrade():\n    {body}\n\n\ndef downgrade():\n    {undo}\n"
            )
            down = rev
        lines += [
            "[[tool.cathouse_harness.services]]",
            f'name = "{schema}-service"',
            f'schema = "{schema}"',
            f'alembic_ini = "{schema}-service/alembic.ini"',
            "pool_size = 1",
            "max_overflow = 0",
            "",
        ]
    (project / "pyproject.toml").write_text("\n".join(lines))
    return project


def synthetic(home: Path, root: Path, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for services, revisions in shapes:
        project = synthetic_project(root, services, revisions)
        build = probe(home, project, f"bench-syn-{uuid.uuid4().hex[:6]}")
        reuse = probe(home, project, f"bench-syn-{uuid.uuid4().hex[:6]}")
        rows[f"{services}x{revisions}"] = {
            "services": services,
            "revisions": revisions,
            "cold_setup": build["import_to_ready"],
            "cold_spawn_to_ready": build["spawn_to_ready"],
            "migrate": build["timings"].get("migrate", 0.0),
            "warm_setup": reuse["import_to_ready"],
            "warm_migrate": reuse["timings"].get("migrate", 0.0),
            "warm_template_reused": reuse["template_reused"],
        }
    return rows


# ---------------------------------------------------------------------- report


def row(label: str, value: float | None, target: str = "", note: str = "") -> str:
    return f"| {label} | {fmt(value)} | {target} | {note} |"


def table(r: dict[str, Any]) -> str:
    med = lambda section: section["median"]  # noqa: E731
    lines = ["| measure | median | target | note |", "|---|---|---|---|"]
    lines.append(
        row(
            "cold session → first test (fresh process)",
            med(r["cold"]["spawn_to_ready"]),
            "< 4 s",
            f"import→ready {fmt(med(r['cold']['import_to_ready']))}, "
            f"migrate {fmt(med(r['cold']['migrate']))}",
        )
    )
    lines.append(
        row(
            "warm session → first test (harness imports included)",
            med(r["warm"]["import_to_ready"]),
            "< 1 s",
            f"spawn→ready {fmt(med(r['warm']['spawn_to_ready']))}",
        )
    )
    lines.append(
        row(
            "hot session start (same process)",
            med(r["hot"]["start"]),
            "",
            f"{r['hot']['api_calls']} API calls per session",
        )
    )
    lines.append(
        row(
            "session teardown (warm / hot)",
            med(r["warm"]["teardown"]),
            "",
            f"hot {fmt(med(r['hot']['teardown']))}",
        )
    )
    a = r["api"]
    lines.append(row("raw copy + start of an instance (floor)", med(a["raw_copy"])))
    lines.append(
        row(
            "per-worker fork through the API",
            med(a["fork"]),
            "≤ 1.5x / 2x floor",
            f"{r['ratios']['fork_vs_floor']:.2f}x floor, {a['api_calls_per_fork']} calls",
        )
    )
    lines.append(
        row("API create → ready", med(a["api_create_to_ready"]), "≤ 2x floor", f"{a['create_vs_raw']:.2f}x")
    )
    lines.append(
        row("API delete → finished", med(a["api_delete"]), "", f"raw stop + remove {fmt(med(a['raw_drop']))}")
    )
    i = r["isolation"]
    lines.append(
        row(
            "per test: db_session, session loop (rollback)",
            med(i["db_session_shared_loop"]),
            "< 5 ms",
            "one connection reused, a transaction per test; incl. the test's SELECT 1 "
            f"({fmt(med(i['bare_select_1']))} without db_session)",
        )
    )
    lines.append(
        row(
            "per test: db_session, loop per test (rollback)",
            med(i["db_session"]),
            "",
            "pytest-asyncio default: a connection per test (TLS + SCRAM); engine shared",
        )
    )
    lines.append(row("per test: reset branch", med(i["reset_branch"])))
    pt = r["per_test_branch"]
    ppg = pt.get("pytest_postgresql")
    lines.append(
        row(
            "per test: branch of its own (cathouse_branch_per_test)",
            med(pt["harness"]),
            "≤ 2x raw copy + drop",
            f"{pt['harness_vs_raw']:.2f}x raw ({fmt(med(pt['raw']))})"
            + (f"; pytest-postgresql's clone {fmt(med(ppg))}, {pt['pytest_postgresql_vs_raw']:.2f}x"
               if ppg else ""),
        )
    )
    for n, s in r["scaling"].items():
        lines.append(
            row(
                f"pytest -n {n}: harness overhead (8 trivial tests)",
                s["overhead"],
                "",
                f"wall {fmt(med(s['wall_with_harness']))} vs {fmt(med(s['wall_without']))}; "
                f"{s['api_calls']} API calls ({s['api_calls_per_worker']:.1f}/worker)",
            )
        )
    for key, s in r["synthetic"].items():
        lines.append(
            row(
                f"{key} (services x revisions): template build",
                s["cold_setup"],
                "< 5 s (3x100)" if key == "3x100" else "",
                f"migrate {fmt(s['migrate'])}; next session {fmt(s['warm_setup'])}, "
                f"migrate {fmt(s['warm_migrate'])}",
            )
        )
    lines.append(
        row(
            "naive: fresh database + alembic per service",
            med(r["naive"]["setup"]),
            "",
            f"warm_vs_naive {r['ratios']['warm_vs_naive']:.1f}x (target ≥ 10), "
            f"hot {r['ratios']['hot_vs_naive']:.1f}x",
        )
    )
    if "early_branch" in r:
        early = r["early_branch"]
        lines.append(
            row(
                "warm session → first test, branch before the conftests",
                early["medians"]["early"],
                "within noise of the fixture's",
                f"early/fixture {early['ratios']['early_vs_fixture']:.3f} "
                f"(noise floor {early['ratios']['noise_floor']:.3f}; fixture "
                f"{fmt(early['medians']['fixture'])})",
            )
        )
    if "idle_plugin" in r:
        idle = r["idle_plugin"]
        lines.append(
            row(
                "plugin in a project that does not use it: added",
                idle["added_wall"],
                "not measurable",
                f"ratio enabled/disabled {idle['ratio_wall']:.3f} wall, {idle['ratio_cpu']:.3f} CPU "
                f"(noise floor {idle['floor_wall']:.3f} / {idle['floor_cpu']:.3f}); importing it "
                f"{fmt(idle['import_cpu']['median'])} CPU",
            )
        )
    if "neon_profile" in r:
        for label, seconds, target, path in neon_profile.rows(r["neon_profile"]):
            lines.append(
                row(
                    f"neon preset: {label}",
                    seconds,
                    target,
                    f"{path['round_trips']} round trips, {path['op_waits']} operation waits "
                    "on the critical path",
                )
            )
        lines.append(row("neon preset: session teardown (warm)",
                         r["neon_profile"]["warm"]["teardown"]["median"], "", ""))
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ns = sorted(int(n) for n in r["scaling"])
    left.plot(ns, [r["scaling"][str(n)]["overhead"] for n in ns], marker="o")
    left.set_xticks(ns)
    left.set_title("pytest run: wall with the harness minus without")
    left.set_xlabel("xdist workers")
    left.set_ylabel("harness overhead (s)")
    for services in sorted({s["services"] for s in r["synthetic"].values()}):
        points = sorted(
            (s["revisions"], s["cold_setup"]) for s in r["synthetic"].values() if s["services"] == services
        )
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{services} services")
    right.set_title("cold template build (migrations included)")
    right.set_xlabel("revisions per service")
    right.set_ylabel("template build (s)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shapes (< 3 min)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    reps = 3 if quick else 7
    root = Path(tempfile.mkdtemp(prefix="cathouse-bench-"))
    homes: list[Path] = []
    r: dict[str, Any] = {
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    began = time.perf_counter()
    compile_bytecode()
    try:
        print("cold sessions …", file=sys.stderr)
        cold = []
        for i in range(1 if quick else 3):
            home = root / f"cold-{i}"
            homes.append(home)
            cold.append(probe(home, EXAMPLE, f"bench-cold-{i}"))
            stop_home(home)
        r["cold"] = sessions(cold)

        warm_home = root / "warm"
        homes.append(warm_home)
        probe(warm_home, EXAMPLE, "bench-prime")  # server up, template built
        print("warm and hot sessions …", file=sys.stderr)
        # A warm start is ~0.2 s, within the machine's noise: more runs than elsewhere.
        warm_reps = 9 if quick else 15
        r["warm"] = sessions([probe(warm_home, EXAMPLE, f"bench-warm-{i}") for i in range(warm_reps)])
        r["hot"] = session_overhead.hot_sessions(warm_home, reps * 2)
        print("API latency …", file=sys.stderr)
        r["api"] = api_latency.measure(warm_home, 10 if quick else 25, template_id=r["hot"]["template_id"])
        print("per-test isolation …", file=sys.stderr)
        r["isolation"] = session_overhead.isolation(warm_home, 20 if quick else 50, reps)
        r["per_test_branch"] = per_test_branch.measure(warm_home, 15 if quick else 40)
        print("xdist scaling …", file=sys.stderr)
        r["scaling"] = scaling(warm_home, root, [1, 2, 4], 2 if quick else 3)
        print("synthetic projects …", file=sys.stderr)
        shapes = (
            [(3, 10), (6, 10), (12, 10), (3, 100)]
            if quick
            else [(3, 10), (6, 10), (12, 10), (3, 100), (6, 100), (12, 100)]
        )
        r["synthetic"] = synthetic(warm_home, root, shapes)
        print("naive baseline …", file=sys.stderr)
        r["naive"] = naive(warm_home, EXAMPLE, 3 if quick else 5)
        print("branch before the conftests (env mapping) vs at the fixture …", file=sys.stderr)
        r["early_branch"] = early_branch.measure(5 if quick else 9)
        print("idle plugin …", file=sys.stderr)
        r["idle_plugin"] = idle_plugin.measure(root, 9 if quick else 21)
        print("at Neon's latencies (CATHOUSE_LOCAL_LATENCY=neon) …", file=sys.stderr)
        r["neon_profile"] = neon_profile.measure("neon", 1 if quick else 2)
        print("a PostgreSQL per branch …", file=sys.stderr)
        r["instance_plane"] = instance_plane.measure(root, 3 if quick else 7, 5 if quick else 9,
                                                    5 if quick else 20)
    finally:
        for home in homes:
            stop_home(home)
        shutil.rmtree(root, ignore_errors=True)

    naive_setup = r["naive"]["setup"]["median"]
    calls = {int(n): s["api_calls"] for n, s in r["scaling"].items()}
    ns = sorted(calls)
    slope = (calls[ns[-1]] - calls[ns[0]]) / (ns[-1] - ns[0]) if len(ns) > 1 else 0.0
    r["ratios"] = {
        "warm_vs_naive": naive_setup / r["warm"]["import_to_ready"]["median"],
        "warm_spawn_vs_naive": naive_setup / r["warm"]["spawn_to_ready"]["median"],
        "hot_vs_naive": naive_setup / r["hot"]["start"]["median"],
        "fork_vs_floor": r["api"]["fork_vs_floor"],
        "create_vs_raw": r["api"]["create_vs_raw"],
        "api_calls_per_worker": {str(n): calls[n] / n for n in ns},
        "api_calls_per_added_worker": slope,
        "api_calls_constant": calls[ns[0]] - slope * ns[0],
        **{f"neon_{k}": v for k, v in r["neon_profile"]["ratios"].items()},
        "early_branch_vs_fixture": r["early_branch"]["ratios"]["early_vs_fixture"],
        "early_branch_noise_floor": r["early_branch"]["ratios"]["noise_floor"],
        "instance_fork_vs_floor": r["instance_plane"]["fork_vs_floor"],
        "instance_fork_to_ready_vs_floor": r["instance_plane"]["fork_to_ready_vs_floor"],
    }
    r["seconds"] = time.perf_counter() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    print(table(r))
    ratios = r["ratios"]
    print(
        f"\nratios: warm_vs_naive {ratios['warm_vs_naive']:.1f} (≥ 10), fork_vs_floor "
        f"{ratios['fork_vs_floor']:.2f} (≤ 2; issue 5: ≤ 1.5), "
        f"create_vs_raw {ratios['create_vs_raw']:.2f} (≤ 2), "
        f"API calls = {ratios['api_calls_constant']:.0f} "
        f"+ {ratios['api_calls_per_added_worker']:.1f} x workers"
    )
    print()
    api_latency.print_result(r["api"])
    session_overhead.print_result(r["hot"], r["isolation"], None)
    per_test_branch.print_result(r["per_test_branch"])
    idle_plugin.print_result(r["idle_plugin"])
    instance_plane.print_result(r["instance_plane"])
    if not args.no_plot and plot(r, args.out.with_suffix(".png")):
        print(f"plot: {args.out.with_suffix('.png')}")
    print(f"results: {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
