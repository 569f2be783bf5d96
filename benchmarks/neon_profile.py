"""Sessions at Neon's latencies: what sits on the critical path, measured for real.

    python benchmarks/neon_profile.py [--profile neon] [--reps 3] [--out FILE]

The local server runs with `CATHOUSE_LOCAL_LATENCY` (default: the `neon` preset), so
every API round trip and every operation really takes Neon's time and the harness's own
waiting and overlapping are what is measured. Each case is timed to its first test and
read back from the server's request journal (`GET /_local/requests`), which gives the
sequential round trips and operation waits on its critical path:

- cold: fresh home, no server, no template (`_probe.py` in a fresh process);
- warm: server up, template reused (`_probe.py` again), forking its branch (`spare =
  false`); and warm with `spare = true`, claiming the spare the previous session's
  refill made (`spare_session`);
- xdist: `pytest -n 1` and `-n 4` on a copy of examples/cathouse with 8 trivial tests,
  time until every worker has started its first test; `-n 4` twice: a database per worker
  on one branch (the default) and a branch per worker (`worker_isolation = "branch"`);
- naive: a fresh branch per session through the API (`create_branch`, waited), then each
  service's `alembic upgrade head` as its own process, in order.

Critical path: the longest chain of requests each received after the previous one's
answer (for one process, its sequential calls; across xdist workers an upper bound).
In it, a run of polls (GET of an operation or an endpoint) is one operation wait; every
other request is a round trip (the fork's POST among them; a refused one, e.g. a 423
from the project lock, is marked with its status).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import (
    EXAMPLE,
    add_results_option,
    alembic_each,
    child_env,
    compile_bytecode,
    fmt,
    home_env,
    probe,
    stop_home,
    summary,
    write_results,
)

LATENCY_ENV = "CATHOUSE_LOCAL_LATENCY"
STAMPS_ENV = "CATHOUSE_BENCH_STAMPS"
POLLS = ("operations/{operation_id}", "endpoints/{endpoint_id}")

TRIVIAL = """
import os
import time

import pytest


@pytest.mark.parametrize("n", range(8))
def test_branch(n, neon_branch):
    with open(os.environ["CATHOUSE_BENCH_STAMPS"], "a") as out:
        out.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {time.time()}\\n")
"""


# the same tests without a branch: what xdist itself takes to start N workers here
PLAIN = TRIVIAL.replace("def test_branch(n, neon_branch):", "def test_plain(n):")


# ---------------------------------------------------------------------- the journal


def journal(home: Path, since: float) -> list[dict[str, Any]]:
    from cathouse_harness.local.discovery import live_server

    info = live_server(home, "memory")
    assert info is not None, "no local server answers for the benchmark's home"
    answer = httpx.get(
        f"{info.api_host}/_local/requests",
        params={"since": since},
        headers={"Authorization": f"Bearer {info.api_key.reveal()}"},
        timeout=30,
    )
    answer.raise_for_status()
    return list(answer.json()["requests"])


def settle(home: Path, timeout: float = 60.0) -> None:
    """Wait until the project runs no operation: a case measures a session started on an
    idle project, not one queued behind the deletes the previous case asked for (a
    session's end does not wait for them; see docs/performance.md, "At Neon's latencies")."""
    from cathouse_harness.local.discovery import live_server

    info = live_server(home, "memory")
    if info is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{info.api_host}/projects/{info.project_id}/operations",
            headers={"Authorization": f"Bearer {info.api_key.reveal()}"},
            timeout=30,
        )
        answer.raise_for_status()
        idle = all(op["status"] in ("finished", "failed", "skipped", "cancelled")
                   for op in answer.json()["operations"])
        # and the watchdogs that confirm those deletes are done asking
        if idle and not any((home / "runs").glob("*/*/*/deleting-*")):
            return
        time.sleep(0.1)


def critical_path(entries: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """The longest chain of requests in [start, end], each received after the previous
    one's answer (earliest-answer-first is the longest such chain)."""
    from cathouse_harness.neon.stats import route_of

    inside = [e for e in entries if e["received"] >= start and e["answered"] <= end]
    chain: list[dict[str, Any]] = []
    last = float("-inf")
    for entry in sorted(inside, key=lambda e: e["answered"]):
        if entry["received"] >= last:
            chain.append(entry)
            last = entry["answered"]
    steps: list[str] = []
    for entry in chain:
        route = route_of(entry["method"], entry["path"].removeprefix("/api/v2"))
        poll = entry["method"] == "GET" and route.endswith(POLLS)
        if poll and steps and steps[-1].startswith("wait "):
            continue  # one wait, however many polls it took
        refused = "" if 200 <= entry["status"] < 300 else f" → {entry['status']}"
        steps.append(f"wait ({route})" if poll else route + refused)
    waits = sum(s.startswith("wait ") for s in steps)
    return {
        "requests": len(inside),
        "chain": len(chain),
        "round_trips": len(steps) - waits,
        "op_waits": waits,
        "steps": steps,
    }


# ---------------------------------------------------------------------- sessions


SPARE_ON = {"CATHOUSE_SPARE": "true"}


def spare_session(home: Path, run_id: str) -> dict[str, Any]:
    """A warm session that claims this machine's spare (`spare = true`): the one the
    previous such session's refill made, waited for first (its record in the home)."""
    settle(home)
    deadline = time.monotonic() + 60
    while not any((home / "spares").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = session(home, run_id, **SPARE_ON)
    if result.get("spare") != "claimed":
        raise RuntimeError(f"{run_id} forked instead of claiming the spare")
    return result


def session(home: Path, run_id: str, **extra: str) -> dict[str, Any]:
    """A session in a fresh process (the server it starts inherits the profile from this
    process's environment, set by `measure`), with its critical path; `extra`: variables
    of its environment."""
    settle(home)
    result = probe(home, EXAMPLE, run_id, **extra)
    start, end = result["spawned_at"], result["ready_at"]
    result["path"] = critical_path(journal(home, start), start, end)
    return result


def xdist(
    home: Path, root: Path, workers: int, isolation: str = "database", *, tests: str = "tests"
) -> dict[str, Any]:
    """`pytest -n workers` on the 8 trivial tests of `tests` ("tests": with a branch,
    "plain": without, so the harness does nothing)."""
    project = root / "xdist-project"
    if not project.exists():
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".env", "tests"))
        (project / "tests").mkdir()
        (project / "tests" / "test_trivial.py").write_text(TRIVIAL)
        (project / "plain").mkdir()
        (project / "plain" / "test_plain.py").write_text(PLAIN)
    settle(home)
    stamps = root / f"stamps-{uuid.uuid4().hex[:6]}"
    started, wall = time.perf_counter(), time.time()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q",
         "-n", str(workers), tests],
        cwd=project,
        env=child_env(home, **{STAMPS_ENV: str(stamps), "CATHOUSE_RUN_ID": f"bench-{stamps.name}",
                               "CATHOUSE_WORKER_ISOLATION": isolation}),
        capture_output=True,
        text=True,
    )
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pytest -n {workers} failed: {done.stdout[-2000:]}")
    firsts: dict[str, float] = {}
    for line in stamps.read_text().splitlines():
        worker, moment = line.split()
        firsts[worker] = min(firsts.get(worker, float("inf")), float(moment))
    all_started = max(firsts.values())
    return {
        "first_test": min(firsts.values()) - wall,
        "every_worker_started": all_started - wall,
        "wall": total,
        "workers_seen": len(firsts),
        "path": critical_path(journal(home, wall), wall, all_started),
    }


def naive(home: Path) -> dict[str, Any]:
    """A fresh branch per session (through the API, waited), then `alembic upgrade head`
    per service, each its own process, in order."""
    from cathouse_harness.config.settings import load_settings
    from cathouse_harness.neon.backend import connect_backend, open_client

    with home_env(home):
        settings = load_settings(EXAMPLE)
        backend = connect_backend(settings)

    async def fresh() -> tuple[str, str]:
        async with open_client(backend) as client:
            main = await client.resolve_branch(backend.project_id, settings.parent_branch)
            created = await client.create_branch(
                backend.project_id, name=f"naive-{uuid.uuid4().hex[:8]}", parent_id=main.id
            )
            uri = next(c.uri for c in created.connection_uris if c.database == settings.database)
            return created.branch.id, uri.reveal()

    async def drop(branch_id: str) -> None:
        async with open_client(backend) as client:
            await client.delete_branch(backend.project_id, branch_id)

    settle(home)
    started, wall = time.perf_counter(), time.time()
    branch_id, url = asyncio.run(fresh())
    alembic_each(home, settings, url)
    setup, ready_wall = time.perf_counter() - started, time.time()
    path = critical_path(journal(home, wall), wall, ready_wall)
    asyncio.run(drop(branch_id))
    return {"setup": setup, "path": path}


# ---------------------------------------------------------------------- report


def _median_path(paths: list[dict[str, Any]]) -> dict[str, Any]:
    """The path of the run with the median chain (they rarely differ)."""
    ordered = sorted(paths, key=lambda p: p["chain"])
    return ordered[len(ordered) // 2]


def measure(profile: str, reps: int) -> dict[str, Any]:
    from cathouse_harness.local.sim.latency import parse_latency

    compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="cathouse-neon-profile-"))
    saved = os.environ.get(LATENCY_ENV)
    os.environ[LATENCY_ENV] = profile  # for the servers this process starts, too
    r: dict[str, Any] = {"profile": profile, "figures": parse_latency(profile).to_spec(), "reps": reps}
    try:
        colds: list[dict[str, Any]] = []
        warms: list[dict[str, Any]] = []
        for rep in range(reps):
            home = root / f"home-{rep}"
            home.mkdir(mode=0o700)
            print(f"cold session {rep + 1}/{reps} …", file=sys.stderr)
            colds.append(session(home, f"cold-{rep}"))
            if rep < reps - 1:
                stop_home(home)
        print("warm sessions, forking and claiming the spare in turns …", file=sys.stderr)
        session(home, "spare-prime", **SPARE_ON)  # its refill makes the first spare
        spares: list[dict[str, Any]] = []
        for rep in range(reps):  # in turns: a load that drifts weighs on both alike
            warms.append(session(home, f"warm-{rep}"))
            spares.append(spare_session(home, f"spare-{rep}"))
        naives = []
        for rep in range(reps):
            print(f"naive {rep + 1}/{reps} …", file=sys.stderr)
            naives.append(naive(home))
        # the third: a branch per worker (`worker_isolation = "branch"`), as before a
        # database per worker, for the ratio in the same run
        # and the same tests without a branch, so that what xdist itself takes to start
        # N workers on this machine can be told from what the harness adds
        cases = {
            "1": (1, "database", "tests"), "4": (4, "database", "tests"),
            "4_branch": (4, "branch", "tests"), "1_plain": (1, "database", "plain"),
            "4_plain": (4, "database", "plain"),
        }
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in cases}
        for rep in range(reps):
            for key, (n, isolation, tests) in cases.items():
                print(f"pytest -n {n}, {tests}, {isolation} per worker ({rep + 1}/{reps}) …",
                      file=sys.stderr)
                runs[key].append(xdist(home, root, n, isolation, tests=tests))
        r["cold"] = {
            "spawn_to_ready": summary([c["spawn_to_ready"] for c in colds]),
            "import_to_ready": summary([c["import_to_ready"] for c in colds]),
            "timings": [c["timings"] for c in colds],
            "path": _median_path([c["path"] for c in colds]),
        }
        r["warm"] = {
            "spawn_to_ready": summary([w["spawn_to_ready"] for w in warms]),
            "import_to_ready": summary([w["import_to_ready"] for w in warms]),
            "timings": [w["timings"] for w in warms],
            "api_calls": max(w["api_calls"] for w in warms),
            # the probe's finish(): what the end of a session waits for
            "teardown": summary([w["teardown"] for w in warms]),
            "template_reused": all(w["template_reused"] for w in warms),
            "path": _median_path([w["path"] for w in warms]),
        }
        r["warm_spare"] = {
            "spawn_to_ready": summary([w["spawn_to_ready"] for w in spares]),
            "import_to_ready": summary([w["import_to_ready"] for w in spares]),
            "timings": [w["timings"] for w in spares],
            "teardown": summary([w["teardown"] for w in spares]),
            "path": _median_path([w["path"] for w in spares]),
        }
        r["naive"] = {
            "setup": summary([n["setup"] for n in naives]),
            "path": _median_path([n["path"] for n in naives]),
        }
        for n, found in runs.items():
            r[f"xdist_{n}"] = {
                "every_worker_started": summary([x["every_worker_started"] for x in found]),
                "first_test": summary([x["first_test"] for x in found]),
                "wall": summary([x["wall"] for x in found]),
                "path": _median_path([x["path"] for x in found]),
            }
        r["ratios"] = {
            "warm_vs_naive": r["naive"]["setup"]["median"] / r["warm"]["spawn_to_ready"]["median"],
            "spare_vs_warm": r["warm_spare"]["spawn_to_ready"]["median"]
            / r["warm"]["spawn_to_ready"]["median"],
            "n4_vs_n1": r["xdist_4"]["every_worker_started"]["median"]
            / r["xdist_1"]["every_worker_started"]["median"],
            "n4_branch_vs_n1": r["xdist_4_branch"]["every_worker_started"]["median"]
            / r["xdist_1"]["every_worker_started"]["median"],
            # what the harness adds to xdist's own start, at 4 workers against 1
            "overhead_n4_vs_n1": _overhead(r, "4") / _overhead(r, "1"),
        }
        return r
    finally:
        for home in root.glob("home-*"):
            stop_home(home)
        shutil.rmtree(root, ignore_errors=True)
        if saved is None:
            os.environ.pop(LATENCY_ENV, None)
        else:
            os.environ[LATENCY_ENV] = saved


def _overhead(r: dict[str, Any], workers: str) -> float:
    started = r[f"xdist_{workers}"]["every_worker_started"]["median"]
    return float(started - r[f"xdist_{workers}_plain"]["every_worker_started"]["median"])


def rows(r: dict[str, Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(label, seconds, target, critical path) per case, for this table and run.py's."""
    return [
        ("cold session → first test (fresh process, server start, template build)",
         r["cold"]["spawn_to_ready"]["median"], "overlap what can", r["cold"]["path"]),
        ("warm session → first test (fresh process, template reused)",
         r["warm"]["spawn_to_ready"]["median"], "fork + ≤ 2 round trips", r["warm"]["path"]),
        *_spare_rows(r),
        ("pytest -n 1: until its worker's first test", r["xdist_1"]["every_worker_started"]["median"],
         "", r["xdist_1"]["path"]),
        ("pytest -n 4: until every worker's first test", r["xdist_4"]["every_worker_started"]["median"],
         "≤ -n 1", r["xdist_4"]["path"]),
        ("pytest -n 4, a branch per worker (worker_isolation = branch)",
         r["xdist_4_branch"]["every_worker_started"]["median"], "", r["xdist_4_branch"]["path"]),
        ("pytest -n 1 without a branch (xdist alone)",
         r["xdist_1_plain"]["every_worker_started"]["median"], "", r["xdist_1_plain"]["path"]),
        ("pytest -n 4 without a branch (xdist alone)",
         r["xdist_4_plain"]["every_worker_started"]["median"], "", r["xdist_4_plain"]["path"]),
        ("naive: fresh branch + alembic upgrade head per service", r["naive"]["setup"]["median"],
         "", r["naive"]["path"]),
    ]


def _spare_rows(r: dict[str, Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    """The warm session that claims the spare; none in results from before spares."""
    if "warm_spare" not in r:
        return []
    return [("warm session → first test, this machine's spare claimed (spare = true)",
             r["warm_spare"]["spawn_to_ready"]["median"], "≤ 1 round trip, ≤ 1.0 s",
             r["warm_spare"]["path"])]


def table(r: dict[str, Any]) -> str:
    lines = [
        f"latency profile {r['profile']} ({r['figures']}), {r['reps']} runs each, medians",
        "| case | time | target | sequential round trips (a fork's POST included) | operation waits |",
        "|---|---|---|---|---|",
    ]
    for label, seconds, target, path in rows(r):
        lines.append(f"| {label} | {fmt(seconds)} | {target} | {path['round_trips']} | {path['op_waits']} |")
    lines.append(f"| session teardown (warm) | {fmt(r['warm']['teardown']['median'])} | | | |")
    ratios = r["ratios"]
    lines.append(
        f"\nwarm_vs_naive {ratios['warm_vs_naive']:.1f}x, -n 4 / -n 1 {ratios['n4_vs_n1']:.2f}, "
        f"-n 4 with a branch per worker / -n 1 {ratios['n4_branch_vs_n1']:.2f}; the harness's "
        f"part (time minus xdist alone): -n 1 {fmt(_overhead(r, '1'))}, -n 4 {fmt(_overhead(r, '4'))}, "
        f"-n 4 / -n 1 {ratios['overhead_n4_vs_n1']:.2f}"
        + (f"; warm with the spare / forking {ratios['spare_vs_warm']:.2f}"
           if "spare_vs_warm" in ratios else "")
    )
    for label, _, _, path in rows(r):
        lines.append(f"\n{label}:\n  " + "\n  ".join(path["steps"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="neon")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the raw figures here (JSON)")
    add_results_option(parser, "neon_profile")
    args = parser.parse_args()
    began = time.perf_counter()
    r = measure(args.profile, args.reps)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2) + "\n")
    shown = table(r)
    print(shown)
    if args.results:
        path = write_results("neon_profile", r, [], began, printed=shown, profile=args.profile,
                             reps=args.reps)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

