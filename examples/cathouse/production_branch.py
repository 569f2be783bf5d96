"""Make a "production" branch for `cathouse-branch rehearse --parent production` to fork.

It stands for the database the Cat House runs on: every service migrated to what is
deployed (auth-service one revision behind its head, the others at head) and
`auth.users` holding `--rows` users, so that the pending revision (an index on
`users.created_at`, built while the same transaction holds ACCESS EXCLUSIVE from its
`ADD COLUMN`) is visibly slow. The branch is the user's own, not the harness's: it
carries no harness marks, and the harness only ever reads it.

    python production_branch.py --rows 1000000      # from examples/cathouse

Uses the same backend as cathouse-branch (Neon with NEON_API_KEY and a project id, the
embedded default without). An existing "production" branch is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cathouse_harness.branching.lifecycle import handle_for
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.connection import run_with_connection
from cathouse_harness.migrate.runner import upgrade_service
from cathouse_harness.neon.backend import connect_backend, open_client
from cathouse_harness.support.sync import run_sync
from sqlalchemy import text

NAME = "production"
# what production runs: auth-service's last revision is the one to rehearse
DEPLOYED = {"auth-service": "3f1a9c2b7d10"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="users to load (default 1000000)")
    parser.add_argument("--name", default=NAME, help=f"the branch's name (default {NAME})")
    parser.add_argument("--project-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    settings = load_settings(args.project_dir)
    backend = connect_backend(settings)

    async def branch() -> tuple[Any, bool]:
        async with open_client(backend) as client:
            found = await client.find_branch(backend.project_id, args.name)
            created = found is None
            if found is None:
                parent = next(b for b in await client.list_branches(backend.project_id) if b.default)
                found = (await client.create_branch(backend.project_id, name=args.name,
                                                    parent_id=parent.id, wait=True)).branch
            handle = await handle_for(client, backend.project_id, found.id,
                                      database=settings.database, role=settings.role)
            return handle, created

    handle, created = run_sync(branch())
    if not created:
        print(f"{args.name} ({handle.id}) exists already: left as it is", file=sys.stderr)
        return 0

    def load(connection: Any) -> None:
        for service in settings.migrating_services:
            upgrade_service(connection, settings, service, DEPLOYED.get(service.name))
        with connection.begin():
            connection.execute(text(
                "INSERT INTO auth.users (email, display_name, created_at) "
                "SELECT 'cat' || g || '@example.com', 'Cat ' || g, now() - g * interval '1 second' "
                "FROM generate_series(1, :rows) AS g"), {"rows": args.rows})
            connection.execute(text("ANALYZE auth.users"))

    run_with_connection(str(handle.direct_url), load)
    print(f"created {args.name} ({handle.id}) with {args.rows} users; rehearse with: "
          f"cathouse-branch rehearse --parent {args.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
