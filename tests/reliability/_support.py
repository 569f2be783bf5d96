"""Helpers for the reliability suite: a local Neon server per module, plugin runs in
subprocesses, and the measurements every fault case is judged by (leaks, touches and a
checksum of the parent branch)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cathouse_harness.branching.lifecycle import MARK, MARK_KIND, NAME_PREFIX
from cathouse_harness.local.server import LocalServerInfo, ensure_local_server

from tests._pins import SUITE_PINS
from tests.plugin._support import copy_example

REPO = Path(__file__).resolve().parents[2]
FINAL = ("finished", "failed", "error", "cancelled", "skipped")


# ---------------------------------------------------------------------- the local API


class LocalNeon:
    """Plain HTTP access to the local server for the measurements (never the harness's
    own client: the judge must not share the code it judges)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.refresh()

    def refresh(self) -> None:
        # the project the harness's runs in this home ask for (its default names)
        info: LocalServerInfo = ensure_local_server(
            self.home, database="cathouse", role="cathouse_owner"
        )
        self.info = info
        self.project = info.project_id
        self.key = info.api_key.reveal()
        self.http = httpx.Client(
            base_url=info.api_host, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def _get(self, path: str, **params: Any) -> Any:
        for _ in range(20):  # the judge's own reads ride out injected faults
            try:
                answer = self.http.get(path, params=params or None)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if answer.status_code in (423, 429, 500, 503):
                time.sleep(0.1)
                continue
            answer.raise_for_status()
            return answer.json()
        raise AssertionError(f"GET {path} kept failing")

    def set_faults(self, spec: str) -> None:
        answer = self.http.put("/_local/faults", json={"spec": spec})
        answer.raise_for_status()

    def branches(self) -> list[dict[str, Any]]:
        data = self._get(f"/projects/{self.project}/branches")
        notes = data.get("annotations") or {}
        rows = []
        for branch in data["branches"]:
            annotation = (notes.get(branch["id"]) or {}).get("value") or {}
            rows.append({**branch, "annotation": annotation})
        return rows

    def operations(self) -> list[dict[str, Any]]:
        return list(self._get(f"/projects/{self.project}/operations")["operations"])

    def default_branch(self) -> dict[str, Any]:
        return next(b for b in self.branches() if b.get("default"))

    def direct_url(self, branch_id: str) -> str:
        data = self._get(
            f"/projects/{self.project}/connection_uri",
            branch_id=branch_id, database_name="cathouse", role_name="cathouse_owner", pooled="false",
        )
        return str(data["uri"])

    def wait_operations(self, ops: Iterable[Mapping[str, Any]], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for op in ops:
            while self._get(f"/projects/{self.project}/operations/{op['id']}")["operation"][
                "status"
            ] not in FINAL:
                assert time.monotonic() < deadline, f"operation {op['id']} did not finish"
                time.sleep(0.02)

    def create_branch(self, name: str, *, annotation: dict[str, str] | None = None,
                      protected: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"branch": {"name": name}, "endpoints": [{"type": "read_write"}]}
        if protected:
            body["branch"]["protected"] = True
        if annotation:
            body["annotation_value"] = annotation
        answer = self.http.post(f"/projects/{self.project}/branches", json=body)
        assert answer.status_code == 201, answer.text
        created = answer.json()
        self.wait_operations(created["operations"])
        # Read again: the create's answer shows the branch before it became ready (its
        # updated_at moves then), and tests compare later reads with this one.
        again = self.http.get(f"/projects/{self.project}/branches/{created['branch']['id']}")
        assert again.status_code == 200, again.text
        return dict(again.json()["branch"])

    def delete_branch(self, branch_id: str) -> None:
        answer = self.http.delete(f"/projects/{self.project}/branches/{branch_id}")
        if answer.status_code == 200:
            self.wait_operations(answer.json()["operations"])


# ---------------------------------------------------------------------- checksums


async def _checksum(url: str) -> str:
    """md5 over the database's schema (columns, constraints, indexes) and every table's
    rows in a fixed order: equal checksums mean byte-for-byte equal contents."""
    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        digest = hashlib.md5()
        schema = await conn.fetch(
            """
            SELECT table_schema, table_name, column_name, data_type, is_nullable,
                   coalesce(column_default, '')
              FROM information_schema.columns
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
             ORDER BY 1, 2, 3
            """
        )
        digest.update(repr([tuple(r) for r in schema]).encode())
        extra = await conn.fetch(
            """
            SELECT n.nspname, c.conname, pg_get_constraintdef(c.oid)
              FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT schemaname, indexname, indexdef FROM pg_indexes
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
            UNION ALL
            SELECT nspname, 'schema', '' FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
             ORDER BY 1, 2, 3
            """
        )
        digest.update(repr([tuple(r) for r in extra]).encode())
        tables = await conn.fetch(
            """
            SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
              FROM information_schema.tables
             WHERE table_type = 'BASE TABLE'
               AND table_schema NOT IN ('pg_catalog', 'information_schema')
             ORDER BY 1
            """
        )
        for (table,) in tables:
            rows = await conn.fetchval(
                f"SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t"
            )
            digest.update(f"{table}:{rows}".encode())
        return digest.hexdigest()
    finally:
        await conn.close()


def checksum(url: str) -> str:
    return asyncio.run(_checksum(url))


async def _execute(url: str, statements: Iterable[str]) -> None:
    conn = await asyncpg.connect(url, statement_cache_size=0)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def execute(url: str, *statements: str) -> None:
    asyncio.run(_execute(url, statements))


# ---------------------------------------------------------------------- what a case is judged by


@dataclass(frozen=True)
class Guarded:
    """A branch the harness did not create, as seen before a case."""

    id: str
    name: str
    facts: tuple[Any, ...]
    checksum: str


@dataclass
class Baseline:
    branch_ids: frozenset[str]
    guarded: tuple[Guarded, ...]
    parent_id: str
    parent_checksum: str
    operation_ids: frozenset[str]


def _facts(branch: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        branch["name"], branch.get("parent_id"), bool(branch.get("default")),
        bool(branch.get("protected")), branch.get("expires_at"),
        tuple(sorted((branch.get("annotation") or {}).items())),
    )


def is_harness(branch: Mapping[str, Any]) -> bool:
    return (branch.get("annotation") or {}).get(MARK) == "1" and branch["name"].startswith(NAME_PREFIX)


def take_baseline(neon: LocalNeon) -> Baseline:
    branches = neon.branches()
    guarded = tuple(
        Guarded(b["id"], b["name"], _facts(b), checksum(neon.direct_url(b["id"])))
        for b in branches
        if not is_harness(b)
    )
    parent = next(b for b in branches if b.get("default"))
    parent_sum = next(g.checksum for g in guarded if g.id == parent["id"])
    return Baseline(
        branch_ids=frozenset(b["id"] for b in branches),
        guarded=guarded,
        parent_id=parent["id"],
        parent_checksum=parent_sum,
        operation_ids=frozenset(op["id"] for op in neon.operations()),
    )


def leaked_branches(neon: LocalNeon, baseline: Baseline) -> list[str]:
    """Branches a case left behind: every new branch except one ready template per name
    (templates are kept on purpose, for the next run to fork)."""
    leaked: list[str] = []
    templates: dict[str, list[str]] = {}
    for branch in neon.branches():
        if branch["id"] in baseline.branch_ids:
            continue
        kind = (branch.get("annotation") or {}).get(MARK_KIND)
        if kind == "template" and not branch["name"].endswith(".building"):
            templates.setdefault(branch["name"], []).append(branch["id"])
            continue
        leaked.append(f"{branch['name']} ({branch['id']})")
    for name, ids in templates.items():
        leaked += [f"{name} ({i}) duplicate template" for i in ids[1:]]
    return leaked


def touched_branches(neon: LocalNeon, baseline: Baseline) -> list[str]:
    """Branches the harness did not create that changed, vanished or saw an operation."""
    now = {b["id"]: b for b in neon.branches()}
    guarded_ids = {g.id for g in baseline.guarded}
    touched: list[str] = []
    for g in baseline.guarded:
        branch = now.get(g.id)
        if branch is None:
            touched.append(f"{g.name} ({g.id}) deleted")
        elif _facts(branch) != g.facts:
            touched.append(f"{g.name} ({g.id}) metadata changed")
        elif checksum(neon.direct_url(g.id)) != g.checksum:
            touched.append(f"{g.name} ({g.id}) data changed")
    for op in neon.operations():
        if op["id"] not in baseline.operation_ids and op.get("branch_id") in guarded_ids:
            touched.append(f"operation {op['action']} on {op['branch_id']}")
    return touched


def parent_changed(neon: LocalNeon, baseline: Baseline) -> bool:
    return checksum(neon.direct_url(baseline.parent_id)) != baseline.parent_checksum


@dataclass
class Row:
    case: str
    outcome: str = "not run"
    leaked: int = -1
    touched: int = -1
    parent_changed: bool | None = None
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    rows = list(rows)
    head = ("case", "outcome", "leaked", "touched", "parent_changed")
    cells = [
        (r["case"], r["outcome"], str(r["leaked"]), str(r["touched"]),
         {True: "yes", False: "no", None: "?"}[r["parent_changed"]])
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return out


# ---------------------------------------------------------------------- plugin runs


def make_project(directory: Path, tests: Mapping[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    copy_example(directory)
    for name, source in tests.items():
        (directory / name).write_text(source)
    return directory


def plugin_env(home: Path, run_id: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k in SUITE_PINS or not k.startswith(("PYTEST_", "NEON_", "CATHOUSE_"))
        and k not in ("DATABASE_URL", "MIGRATION_DATABASE_URL")
    }
    env.update({"CATHOUSE_HARNESS_HOME": str(home), "CATHOUSE_RUN_ID": run_id, "CI": "true"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def start_plugin_run(project: Path, home: Path, run_id: str, *args: str,
                     env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider",
         "-q", "-rA", *args],
        cwd=project, env={**plugin_env(home, run_id), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def run_plugin(project: Path, home: Path, run_id: str, *args: str, timeout: float = 120,
               env: Mapping[str, str] | None = None) -> tuple[int, str]:
    return finish(start_plugin_run(project, home, run_id, *args, env=env), timeout)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
