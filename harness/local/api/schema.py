"""A branch database's schema, and the difference between two branches' schemas.

What Neon's schema routes answer (its console's and GitHub action's schema diff use
them): the SQL is `pg_dump --schema-only` of the database, the JSON lists tables with
their columns, and the comparison is a unified diff of two such dumps. A database
nobody has used yet is made first, so its dump is that of an empty database.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from cathouse_harness.errors import ApiError
from cathouse_harness.local.control.state import BranchRecord
from cathouse_harness.local.data.introspect import describe_tables, dump_schema

if TYPE_CHECKING:
    from cathouse_harness.local.control.control import LocalNeon


async def _dsn(neon: LocalNeon, branch: BranchRecord, db_name: str) -> str:
    db = neon.catalog.database(branch, db_name)
    physical = db.physical or await neon.catalog.materialize(branch, db)
    return await neon.dataplane.admin_url(physical)


async def branch_schema(neon: LocalNeon, branch_id: str, db_name: str, form: str) -> dict[str, Any]:
    branch = neon.branch(branch_id)
    dsn = await _dsn(neon, branch, db_name)
    if form == "json":
        return {"json": {"tables": await describe_tables(dsn)}}
    return {"sql": await dump_schema(dsn)}


async def compare_schema(
    neon: LocalNeon, branch_id: str, base_branch_id: str | None, db_name: str
) -> dict[str, Any]:
    branch = neon.branch(branch_id)
    base_id = base_branch_id or branch.parent_id
    if base_id is None:
        raise ApiError(400, "BAD_REQUEST", f"branch {branch.id} has no parent: name base_branch_id")
    base = neon.branch(base_id)
    before = await dump_schema(await _dsn(neon, base, db_name))
    after = await dump_schema(await _dsn(neon, branch, db_name))
    diff = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{base.id}/{db_name}",
        tofile=f"{branch.id}/{db_name}",
    )
    return {"diff": "".join(diff)}
