"""How fast does cathouse_harness.migrate.all_services migrate? Run by hand; prints timings and ratios.

    python benchmarks/migrate_example.py --dsn postgresql://postgres@127.0.0.1:5432/postgres

`--dsn` is a superuser URL of any PostgreSQL (it creates and drops scratch databases).
Measures, each on a fresh empty database:

1. the Cat House example, in process (`migrate_all`), against the baseline of one
   `alembic upgrade head` subprocess per service (what the seed's init-local-db did);
2. the same through `python -m harness migrate` (interpreter start-up included);
3. a synthetic project of 3 services x 100 revisions, cold (fresh copy, no bytecode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import add_results_option, recorded  # noqa: E402
from cathouse_harness.config.settings import load_settings  # noqa: E402
from cathouse_harness.migrate.all_services import migrate_all  # noqa: E402

EXAMPLE = REPO / "examples" / "cathouse"


def admin(dsn: str, sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


class Scratch:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def __enter__(self) -> str:
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        admin(self.dsn, f'CREATE DATABASE "{self.name}"')
        return self.dsn.rsplit("/", 1)[0] + f"/{self.name}"

    def __exit__(self, *exc: object) -> None:
        admin(self.dsn, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def env_with(url: str) -> dict[str, str]:
    env = dict(os.environ, MIGRATION_DATABASE_URL=url)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def baseline(project: Path, url: str) -> float:
    """One `alembic upgrade head` per service, in order, as separate processes."""
    alembic = [sys.executable, "-m", "alembic"]
    started = time.perf_counter()
    for service in load_settings(project, environ={}).migrating_services:
        assert service.alembic_ini is not None
        subprocess.run([*alembic, "upgrade", "head"], cwd=service.alembic_ini.parent,
                       env=env_with(url), check=True, capture_output=True)
    return time.perf_counter() - started


def in_process(project: Path, url: str) -> float:
    settings = load_settings(project, environ={})
    started = time.perf_counter()
    migrate_all(settings, url)
    return time.perf_counter() - started


def module_run(project: Path, url: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cathouse_harness", "migrate", "--project-dir", str(project)],
                   env=env_with(url), check=True, capture_output=True)
    return time.perf_counter() - started


def synthetic_project(root: Path, services: int, revisions: int) -> Path:
    """Copy the example's first service layout, `services` times, each with a linear
    history of `revisions` revisions (a table, then columns and indexes on it)."""
    schemas = [f"svc{i}" for i in range(services)]
    lines = ["[tool.cathouse_harness]", 'database = "cathouse"', ""]
    # the services' env.py files run the example's shared Alembic environment by path
    shutil.copytree(EXAMPLE / "cathouse_common", root / "cathouse_common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for schema in schemas:
        service_dir = root / f"{schema}-service"
        shutil.copytree(EXAMPLE / "auth-service", service_dir,
                        ignore=shutil.ignore_patterns("__pycache__", "versions"))
        env_py = service_dir / "alembic" / "env.py"
        env_py.write_text(env_py.read_text().replace('"auth"', f'"{schema}"')
                          .replace("_alembic_models_auth", f"_alembic_models_{schema}"))
        models = service_dir / "app" / "models.py"
        models.write_text(models.read_text().replace('SCHEMA = "auth"', f'SCHEMA = "{schema}"'))
        versions = service_dir / "alembic" / "versions"
        versions.mkdir()
        down = None
        for n in range(revisions):
            rev = f"{schema}{n:04d}"
            if n == 0:
                column = 'sa.Column("id", sa.Integer, primary_key=True)'
                body = f'op.create_table("t", {column}, schema="{schema}")'
                undo = f'op.drop_table("t", schema="{schema}")'
            elif n % 2:
                body = f'op.add_column("t", sa.Column("c{n}", sa.Integer), schema="{schema}")'
                undo = f'op.drop_column("t", "c{n}", schema="{schema}")'
            else:
                body = f'op.create_index("ix_t_c{n - 1}", "t", ["c{n - 1}"], schema="{schema}")'
                undo = f'op.drop_index("ix_t_c{n - 1}", table_name="t", schema="{schema}")'
            (versions / f"{rev}_step.py").write_text(textwrap.dedent(f'''\
                """step {n}"""
                import sqlalchemy as sa
                from alembic import op

                revision = {rev!r}
                down_revision = {down!r}
                branch_labels = None
                depends_on = None


                def upgrade():
                    {body}


                def downgrade():
                    {undo}
                '''))
            down = rev
        lines += ["[[tool.cathouse_harness.services]]", f'name = "{schema}-service"',
                  f'schema = "{schema}"', f'alembic_ini = "{schema}-service/alembic.ini"', ""]
    (root / "pyproject.toml").write_text("\n".join(lines))
    return root


def best(runs: list[float]) -> str:
    return f"{min(runs):.3f} s (best of {len(runs)}; runs {', '.join(f'{r:.3f}' for r in runs)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("BENCH_ADMIN_DSN",
                        "postgresql://postgres@127.0.0.1:55502/postgres"))
    parser.add_argument("--repeat", type=int, default=3)
    add_results_option(parser, "migrate_example")
    args = parser.parse_args()
    with recorded("migrate_example", args, time.perf_counter()):
        scratch = Scratch(args.dsn)

        runs_in, runs_base, runs_module = [], [], []
        for _ in range(args.repeat):
            with scratch as url:
                runs_in.append(in_process(EXAMPLE, url))
            with scratch as url:
                runs_base.append(baseline(EXAMPLE, url))
            with scratch as url:
                runs_module.append(module_run(EXAMPLE, url))
        print(f"cat house example, in process (migrate_all): {best(runs_in)}")
        print(f"cat house example, python -m harness migrate: {best(runs_module)}")
        print(f"baseline, alembic upgrade head per service: {best(runs_base)}")
        print(f"ratio baseline / in process: {min(runs_base) / min(runs_in):.1f}x; "
              f"baseline / module: {min(runs_base) / min(runs_module):.1f}x")

        runs_cold = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp, scratch as url:
                project = synthetic_project(Path(tmp), services=3, revisions=100)
                runs_cold.append(in_process(project, url))
        print(f"3 services x 100 revisions, cold, in process: {best(runs_cold)}")
        with tempfile.TemporaryDirectory() as tmp, scratch as url:
            project = synthetic_project(Path(tmp), services=3, revisions=100)
            print(f"3 services x 100 revisions, cold, python -m harness migrate: "
                  f"{module_run(project, url):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
