"""Items 6 and 7: what a developer's commands may act on, and what gc may remove.

`up`, `reset` and `down` act on developers' branches only: a template (every run forks
from it) or a live session's branch is refused, and no branch of the harness is ever a
parent. `gc` keeps other checkouts' templates while they are in use, never removes a
branch that has children, and one failed delete does not keep it from the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.branching import lifecycle as branches
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.backend import connect_backend, open_client

from tests.cli._support import cli, error_lines
from tests.plugin._support import copy_example


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def _with_api(project: Path, work: Callable[[Any, str], Any]) -> Any:
    settings = load_settings(project)
    backend = connect_backend(settings)

    async def run() -> Any:
        async with open_client(backend) as client:
            return await work(client, backend.project_id)

    return asyncio.run(run())


def _harness_branch(project: Path, name: str, kind: str, *, run_id: str = "other-run") -> Any:
    settings = load_settings(project)

    async def make(client: Any, project_id: str) -> Any:
        main = await client.resolve_branch(project_id, "main")
        return await branches.create_owned_branch(
            client, project_id, name=name, parent_id=main.id, ttl=timedelta(hours=1),
            kind=kind,  # type: ignore[arg-type]
            run_id=run_id, database=settings.database, role=settings.role,
        )

    return _with_api(project, make)


def _exists(project: Path, branch_id: str) -> bool:
    async def look(client: Any, project_id: str) -> bool:
        return branch_id in {b.id for b in await branches.harness_branches(client, project_id)}

    return _with_api(project, look)


@pytest.mark.parametrize("kind", ["template", "session"])
def test_up_reset_down_refuse_a_branch_that_is_not_a_developers(project: Path, kind: str) -> None:
    name = f"harness/template/main/{kind}0fp" if kind == "template" else f"harness/run-x/{kind}"
    handle = _harness_branch(project, name, kind)
    for args in (("up", "--name", name), ("reset", name), ("down", name)):
        code, out, err = cli(*args, cwd=project)
        assert code == 2, (args, err)
        lines = error_lines(err)
        assert len(lines) == 1 and handle.id in lines[0] or "keeps for itself" in lines[0], lines
    assert _exists(project, handle.id)
    assert not (project / ".env").exists()


def test_a_branch_of_the_harness_is_never_a_parent(project: Path) -> None:
    handle = _harness_branch(project, "harness/run-y/main", "session")
    code, _, err = cli("up", "--name", "child", "--parent", handle.id, cwd=project)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "never a parent" in lines[0]

    async def children(client: Any, project_id: str) -> list[str]:
        return [b.name for b in await branches.harness_branches(client, project_id)
                if b.parent_id == handle.id]

    assert _with_api(project, children) == []


def test_gc_carries_on_past_a_failed_delete(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _harness_branch(project, "harness/gc-run/gw0", "session", run_id="gc-run")
    second = _harness_branch(project, "harness/gc-run/gw1", "session", run_id="gc-run")
    real_delete = branches.delete_owned_branch

    async def refusing(client: Any, project_id: str, branch_id: str, **kw: Any) -> bool:
        if branch_id == first.id:  # a 422 nothing local produces on demand
            raise NeonAPIError("branch is busy", status=422, method="DELETE", path=f"/branches/{branch_id}")
        return await real_delete(client, project_id, branch_id, **kw)

    monkeypatch.setattr(branches, "delete_owned_branch", refusing)
    code, out, err = cli("gc", "--run", "gc-run", cwd=project)
    assert code == 1, err
    assert f"could not remove harness/gc-run/gw0 ({first.id})" in err
    assert f"removed harness/gc-run/gw1 ({second.id}): belongs to run gc-run" in out
    assert _exists(project, first.id) and not _exists(project, second.id)
