"""Helpers for driving the plugin in pytester subprocesses against the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.branching.lifecycle import (
    MARK_KIND,
    BranchHandle,
    create_owned_branch,
    delete_owned_branch,
    harness_branches,
)
from cathouse_harness.cleanup.runs import DELETING
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.neon.backend import connect_backend, open_client

REPO = Path(__file__).resolve().parents[2]

# For test files written into a pytester project: a table committed on the branch at
# `url`, and whether one was there already (None: the branch had none).
COMMIT_A_TABLE = """
import psycopg


def commit_a_table(url):
    with psycopg.connect(url) as connection:
        present = connection.execute("SELECT to_regclass('public.marks')").fetchone()[0]
        connection.execute("CREATE TABLE public.marks (x int)")
    return present
"""
EXAMPLE = REPO / "examples" / "cathouse"


def copy_example(destination: Path) -> Path:
    """The Cat House example's configuration and migrations (not its tests) in `destination`."""
    destination.mkdir(parents=True, exist_ok=True)  # a file may come first in the listing
    for item in EXAMPLE.iterdir():
        if item.name in ("tests", ".env", "__pycache__", ".pytest_cache"):
            continue
        target = destination / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, target)
    return destination


def confirmed_deletes(settings: Settings, run_id: str | None = None, timeout: float = 60.0) -> None:
    """Wait until the watchdogs have confirmed every delete a session asked for without
    waiting (`deleting-` markers, of one run or all): what is listed next is what is left."""
    runs = settings.home.expanduser().resolve() / "runs"
    pattern = f"{run_id or '*'}/*/*/{DELETING}*"
    deadline = time.monotonic() + timeout
    while _pending(runs, pattern) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pending(runs: Path, pattern: str) -> bool:
    try:
        return any(runs.glob(pattern))
    except FileNotFoundError:  # a run's directory went away while it was read: look again
        return True


def branches_of_run(project_dir: Path, run_id: str | None = None) -> list[str]:
    """Names of the harness branches (of one run, or all) on the embedded default, once
    the deletes asked for at the end of a session are confirmed."""
    settings = load_settings(project_dir)
    confirmed_deletes(settings, run_id)
    backend = connect_backend(settings)

    async def _list() -> list[str]:
        async with open_client(backend) as client:
            found = await harness_branches(client, backend.project_id, run_id=run_id)
            # a template is built by some run but belongs to every later run too
            return sorted(b.name for b in found if b.annotation.get(MARK_KIND) != "template")

    return asyncio.run(_list())


def delete_branch(project_dir: Path, branch_id: str) -> None:
    """Delete one harness branch on the embedded default."""
    backend = connect_backend(load_settings(project_dir))

    async def _delete() -> None:
        async with open_client(backend) as client:
            await delete_owned_branch(client, backend.project_id, branch_id)

    asyncio.run(_delete())


async def session_branch_of_run(
    client: Any, project_id: str, settings: Settings, *, name: str, run_id: str, ttl: timedelta
) -> BranchHandle:
    """A session branch of `run_id` forked from main, marked as the plugin marks its own."""
    main = await client.resolve_branch(project_id, "main")
    return await create_owned_branch(
        client, project_id, name=name, parent_id=main.id, ttl=ttl, kind="session",
        run_id=run_id, database=settings.database, role=settings.role,
    )


def run(project: pytest.Pytester, run_id: str, *args: str) -> pytest.RunResult:
    """`pytest -p cathouse_harness` on `project` in a subprocess, as run `run_id`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CATHOUSE_RUN_ID", run_id)
        return project.runpytest_subprocess("-p", "cathouse_harness", "-p", "no:cacheprovider", *args)


@contextlib.contextmanager
def home_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **environ: str) -> Iterator[Path]:
    """A fresh home (no template, no server yet) with `environ` set; its server is
    stopped and its in-memory cluster removed at the end."""
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.server import stop_local_server

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    try:
        yield home
    finally:
        with contextlib.suppress(Exception):
            stop_local_server(home)
        for path in memory_bases(home):
            shutil.rmtree(path, ignore_errors=True)
