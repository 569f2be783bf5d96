"""Shared pieces of the benchmarks: statistics, homes, the local cluster's superuser.

Every benchmark runs on the embedded default with its own `CATHOUSE_HARNESS_HOME` under
a temporary directory (never the user's cache), and stops the servers it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "examples" / "cathouse"
PROBE = REPO / "benchmarks" / "_probe.py"
# Every row measures a session that forks its own branch, comparable with earlier runs
# (and a refill child would compete for the CPU with the next measurement); the rows of
# the spare (`neon_profile`, "spare claimed") turn it on for their own sessions.
os.environ.setdefault("CATHOUSE_SPARE", "false")


def compile_bytecode() -> None:
    """Write .pyc files for the harness, the plugin and the example, as a package install
    or any first import does. Where PYTHONDONTWRITEBYTECODE is set (some CI images and
    this project's sandboxes), every fresh process would otherwise compile those sources
    again: ~40 ms of each session start, and the example's migration scripts in the naive
    baseline. Both sides of every ratio get the same bytecode."""
    import compileall

    for folder in ("harness", "conftest_plugin", "examples"):
        compileall.compile_dir(str(REPO / folder), quiet=2)


def summary(values: list[float]) -> dict[str, Any]:
    """min / median / max and the raw runs, in seconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "runs": [round(v, 6) for v in values],
    }


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextlib.contextmanager
def home_env(home: Path) -> Iterator[None]:
    """Point this process at `home` (and at the embedded default) for the block."""
    from cathouse_harness.support.env import overridden

    with overridden(
        {"CATHOUSE_HARNESS_HOME": str(home), "NEON_API_KEY": None, "CATHOUSE_BACKEND": "embedded"}
    ):
        yield


def child_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NEON_API_KEY", "PYTEST_XDIST_WORKER")}
    env["CATHOUSE_HARNESS_HOME"] = str(home)
    env["CATHOUSE_BACKEND"] = "embedded"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def stop_home(home: Path) -> None:
    """Stop the home's local server and remove its in-memory cluster."""
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.server import stop_local_server

    with contextlib.suppress(Exception):
        stop_local_server(home)
    for path in memory_bases(home):
        shutil.rmtree(path, ignore_errors=True)


def instance_admin_dsn(home: Path, branch_id: str, database: str = "postgres") -> str:
    """The superuser's DSN of branch `branch_id`'s instance on `home`'s running local
    server: its socket and the lineage's password (`compute.template`), which no client
    of the API is given. The instance must be running (a login through the branch's
    endpoint resumes it), and stays so while a fork of it is not asked for: a fork
    suspends a parent no endpoint client uses, which ends this DSN's sessions."""
    from urllib.parse import quote

    from cathouse_harness.local.compute import layout, users
    from cathouse_harness.local.pg_layout import SUPERUSER
    from cathouse_harness.support.redact import register_url

    compute = layout.open_home(home, users.home_os_user(home), "memory")
    secrets_found = sorted(compute.state.glob("superuser-*.secret"))
    paths = layout.instance_paths(compute, branch_id)
    if len(secrets_found) != 1 or not (paths.data / "PG_VERSION").exists():
        raise SystemExit(f"no single in-memory instance of branch {branch_id} under {home} "
                         f"({len(secrets_found)} superuser secrets): is its local server running?")
    password = quote(secrets_found[0].read_text().strip(), safe="")
    dsn = (f"postgresql://{SUPERUSER}:{password}@/{database}"
           f"?host={quote(str(paths.socket_dir), safe='')}&port={layout.SOCKET_PORT}")
    register_url(dsn)
    return dsn


class PlainPostgres:
    """A plain PostgreSQL on 127.0.0.1 (the test suite's, `tests/_cluster.py`) with the
    calls the benchmarks that need only a database made: roles and databases by SQL."""

    def __init__(self, home: Path) -> None:
        from cathouse_harness.local.pg_binaries import resolve_install, resolve_os_user

        from tests._cluster import Cluster, cluster_root

        user = resolve_os_user()
        self.cluster = Cluster(cluster_root(home, "memory", user), storage="memory", user=user,
                               install=resolve_install(user), home=home)

    async def start(self) -> None:
        await self.cluster.start()

    async def stop(self) -> None:
        await self.cluster.stop()
        self.cluster.release()
        shutil.rmtree(self.cluster.paths.root, ignore_errors=True)

    def admin_dsn(self, database: str = "postgres") -> str:
        return self.cluster.superuser_dsn(database)

    async def _admin(self, statement: Any) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.admin_dsn(), autocommit=True) as admin:
            await admin.execute(statement)

    async def ensure_role(self, role: str, password: str) -> None:
        from cathouse_harness.local.data.scram import scram_verifier
        from psycopg import sql

        await self._admin(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(password))))

    async def create_database(self, name: str, *, owner: str) -> None:
        from psycopg import sql

        await self._admin(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                       sql.Identifier(owner)))

    async def drop_database(self, name: str) -> None:
        from psycopg import sql

        await self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def bench_plane(home: Path, role: str) -> tuple[Any, PlainPostgres, str]:
    """A plain PostgreSQL on `home` on a loop thread of its own, with `role` owning
    database `bench`: (loop, the PostgreSQL, the role's password)."""
    import secrets

    from cathouse_harness.support.sync import LoopThread

    loop = LoopThread("bench-postgres")
    plane = PlainPostgres(home)
    loop.run(plane.start())
    password = secrets.token_urlsafe(18)
    loop.run(plane.ensure_role(role, password))
    loop.run(plane.create_database("bench", owner=role))
    return loop, plane, password


def interleaved(sides: list[str], reps: int, measure: Callable[[str], float]) -> dict[str, float]:
    """The median of `reps` runs of `measure(side)` per side, the sides taking turns."""
    runs: dict[str, list[float]] = {side: [] for side in sides}
    for rep in range(reps):
        shift = rep % len(sides)  # each side goes first as often: no order effect
        for side in sides[shift:] + sides[:shift]:
            runs[side].append(measure(side))
    return {side: statistics.median(values) for side, values in runs.items()}


def connect_query_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that interleave connects and query loops on two
    sides: connects per side, queries a loop, loops per side."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--query-reps", type=int, default=9)
    return parser


RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What a results file says of the machine (with `started_at`, as run.py writes it)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def add_results_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--results", action="store_true",
                        help=f"also write benchmarks/results/{name}.json (for benchmarks/report.py)")


class _Tee:
    """stdout that is also kept."""

    def __init__(self, *streams: Any) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()


@contextlib.contextmanager
def recorded(name: str, args: argparse.Namespace, began: float) -> Iterator[None]:
    """With `--results`: what the block prints (still printed) is kept as the benchmark's
    results file, for a benchmark whose figures are a printed table of its own."""
    if not getattr(args, "results", False):
        yield
        return
    kept = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, kept)):  # type: ignore[type-var]
        yield
    # a connection string may carry a password: never in a file that docs are made from
    arguments = {k: v for k, v in vars(args).items() if k != "results" and "dsn" not in k and "url" not in k}
    print(f"results: {write_results(name, {}, [], began, printed=kept.getvalue(), **arguments)}")


def write_results(name: str, result: dict[str, Any], rows: list[list[str]], began: float, /, *,
                  printed: str | None = None, **arguments: Any) -> Path:
    """`benchmarks/results/<name>.json`: a single-part benchmark's figures, in run.py's
    frame (machine, start, duration), with the rows of its table (or, `printed`, the
    table as it printed it), which `benchmarks/report.py` renders into
    docs/performance.md as they are."""
    seconds = time.perf_counter() - began
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in arguments.items())
    data = {
        "benchmark": name,
        "command": f"python benchmarks/{name}.py {args}".strip(),
        "machine": machine(),
        "started_at": started,
        "seconds": seconds,
        # the machine is shared: a table's absolute times mean little without it
        "load_average": round(os.getloadavg()[0], 1),
        "rows": rows,
        "result": result,
    }
    if printed is not None:
        data["printed"] = printed
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


async def fork_session(
    client: Any, project: str, parent_id: str, settings: Any, name: str, run_id: str
) -> Any:
    """A worker's session fork, as the plugin makes it (`create_owned_branch`)."""
    from datetime import timedelta

    from cathouse_harness.branching.lifecycle import create_owned_branch

    return await create_owned_branch(
        client,
        project,
        name=name,
        parent_id=parent_id,
        ttl=timedelta(minutes=15),
        kind="session",
        run_id=run_id,
        database=settings.database,
        role=settings.role,
    )


def probe(home: Path, project: Path, run_id: str, **extra: str) -> dict[str, Any]:
    """One session in a fresh process (`_probe.py`): its report, `spawn_to_ready`, and the
    wall-clock moments it was spawned and ready (`spawned_at`, `ready_at`, time.time());
    `extra`: variables of its environment."""
    spawned_at, started = time.time(), time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(PROBE), str(project), run_id],
        env=child_env(home, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(project),
    )
    assert process.stdout is not None
    ready = None
    result: dict[str, Any] = {}
    for line in process.stdout:
        if line.startswith("READY") and ready is None:
            ready = time.perf_counter() - started
        elif line.startswith("{"):
            result = json.loads(line)
    stderr = process.stderr.read() if process.stderr else ""
    if process.wait() != 0 or ready is None:
        raise RuntimeError(f"probe failed in {project}: {stderr.strip()[-2000:]}")
    result["spawn_to_ready"] = ready
    result["spawned_at"], result["ready_at"] = spawned_at, spawned_at + ready
    return result


def alembic_each(home: Path, settings: Any, url: str) -> None:
    """The naive way to migrate: each service's `alembic upgrade head`, its own process,
    in order, on `url`."""
    for service in settings.migrating_services:
        assert service.alembic_ini is not None
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=service.alembic_ini.parent,
            check=True,
            capture_output=True,
            env=child_env(home, MIGRATION_DATABASE_URL=url),
        )
