"""What an env.py's shape costs: the shared connection against a connection of its own.

    python benchmarks/env_py_shapes.py [--services 3] [--revisions 20] [--repeat 5]

The same synthetic project (benchmarks/migrate_example.py's: each service a linear
history of tables, columns and indexes) is migrated in process by `migrate_all` twice
over: once with the example's env.py, which runs on `config.attributes["connection"]`
(the harness's one connection for every service), and once with env.py files written
as `alembic init -t generic` writes them (each opens its own connection from
`sqlalchemy.url`). Runs alternate, each on a fresh database of an in-memory embedded
PostgreSQL, and the ratio is of medians taken in this one process.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from _common import REPO, PlainPostgres, add_results_option, timed, write_results  # noqa: F401  (puts the repository on sys.path)
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import migrate_all
from cathouse_harness.support.sync import LoopThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from migrate_example import synthetic_project  # noqa: E402

OWN_CONNECTION_ENV = textwrap.dedent('''\
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config
    SCHEMA = "{schema}"

    engine = engine_from_config(config.get_section(config.config_ini_section, {{}}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table_schema=SCHEMA)
        with context.begin_transaction():
            context.run_migrations()
''')


def own_connection(project: Path) -> Path:
    """The project with every env.py replaced by the template's own-connection form."""
    for env_py in project.glob("*-service/alembic/env.py"):
        schema = env_py.parents[1].name.removesuffix("-service")
        env_py.write_text(OWN_CONNECTION_ENV.format(schema=schema))
    return project


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--revisions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    add_results_option(parser, "env_py_shapes")
    args = parser.parse_args()
    began = time.perf_counter()

    loop = LoopThread("bench-loop")
    with tempfile.TemporaryDirectory() as tmp:
        plane = PlainPostgres(Path(tmp) / "postgres")
        loop.run(plane.start())
        try:
            password = secrets.token_urlsafe(12)
            loop.run(plane.ensure_role("bench", password))
            port = parse_qs(urlsplit(plane.admin_dsn()).query).get("port", ["5432"])[0]
            shared = synthetic_project(Path(tmp) / "shared", args.services, args.revisions)
            own = own_connection(synthetic_project(Path(tmp) / "own", args.services, args.revisions))
            runs: dict[str, list[float]] = {"shared": [], "own": []}
            for _ in range(args.repeat):
                for label, project in (("shared", shared), ("own", own)):
                    name = f"b_{secrets.token_hex(5)}"
                    loop.run(plane.create_database(name, owner="bench"))
                    url = f"postgresql://bench:{password}@127.0.0.1:{port}/{name}"
                    settings = load_settings(project, environ={})
                    runs[label].append(timed(lambda s=settings, u=url: migrate_all(s, u)))
                    loop.run(plane.drop_database(name))
        finally:
            loop.run(plane.stop())
            loop.close()
    shared_ms = statistics.median(runs["shared"]) * 1000 / args.services
    own_ms = statistics.median(runs["own"]) * 1000 / args.services
    print(f"{args.services} services x {args.revisions} revisions, {args.repeat} runs each, "
          "median per service:")
    print(f"  env.py on the shared connection:     {shared_ms:.1f} ms")
    print(f"  env.py with a connection of its own: {own_ms:.1f} ms")
    print(f"  own / shared: {own_ms / shared_ms:.2f}x (+{own_ms - shared_ms:.1f} ms per service)")
    if args.results:
        shape = f"{args.services} services x {args.revisions} revisions, median of {args.repeat}"
        rows = [
            ["migration per service: env.py on the harness's connection", f"{shared_ms:.1f} ms", shape],
            ["migration per service: env.py opening its own", f"{own_ms:.1f} ms",
             f"{own_ms / shared_ms:.2f}x the shared connection"],
        ]
        result = {"shared_ms": shared_ms, "own_ms": own_ms, "runs": runs}
        path = write_results("env_py_shapes", result, rows, began, services=args.services,
                             revisions=args.revisions, repeat=args.repeat)
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
