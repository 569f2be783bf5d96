"""A developer's own branch (`cathouse-branch up`): reused while it lives, else forked
from the configured parent; either way kept alive for `ttl`."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from cathouse_harness.branching import lifecycle as branches
from cathouse_harness.branching import names as branch_names

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.neon.client import NeonClient


async def dev_branch(client: NeonClient, project_id: str, settings: Settings, *, name: str,
                     ttl: timedelta) -> tuple[branches.BranchHandle, bool]:
    """The developer's branch `name` and whether this call created it."""
    # first: a wrong project, key or parent is a one-line config error, before anything
    parent = await branches.resolve_parent(client, project_id, settings)
    existing = await client.find_branch(project_id, name)
    if existing is not None:
        branches.ensure_dev(existing, "reuse")
        handle = await branches.handle_for(
            client, project_id, existing.id, database=settings.database, role=settings.role,
            kind="dev",
        )
        await branches.extend_expiry(client, project_id, [existing.id], ttl)
        return handle, False
    handle = await branches.create_owned_branch(
        client, project_id, name=name, parent_id=parent.id, ttl=ttl, kind="dev",
        run_id=f"dev-{branch_names.clean_name_part(name)}", database=settings.database,
        role=settings.role, schema_only=settings.schema_only,
    )
    return handle, True
