"""`schema_only = true` across sessions, on a home and server of their own: as on Neon, a
schema-only branch is a root branch (no parent), so what the harness knows of it comes
from its name and its annotation, never from `parent_id`."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from harness.backend import connect_backend, open_client
from harness.branches import MARK_KIND, harness_branches
from harness.errors import ConfigError
from harness.local.postgres import memory_cluster_dirs
from harness.local.server import stop_local_server
from harness.neon.models import Branch
from harness.session import BranchSession
from harness.settings import Settings, load_settings
from tests.plugin._support import copy_example


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fresh home (so no template exists yet) and its own server, in schema-only mode."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_SCHEMA_ONLY", "1")
    yield home
    with contextlib.suppress(Exception):
        stop_local_server(home)
    for path in memory_cluster_dirs(home):
        shutil.rmtree(path, ignore_errors=True)


def _templates(settings: Settings) -> list[Branch]:
    async def listed() -> list[Branch]:
        backend = connect_backend(settings)
        async with open_client(backend) as client:
            return await harness_branches(client, backend.project_id)

    return [b for b in asyncio.run(listed()) if b.annotation.get(MARK_KIND) == "template"]


def _session(settings: Settings, run_id: str) -> BranchSession:
    session = BranchSession(settings, run_id=run_id)
    try:
        session.start()
    finally:
        session.finish()
    assert session.report.delete_failed == []
    return session


def test_a_second_schema_only_session_reuses_the_root_template(tmp_path: Path, own_home: Path) -> None:
    settings = load_settings(copy_example(tmp_path / "project"))
    assert settings.schema_only and settings.template_reuse

    first = _session(settings, "so1")
    second = _session(settings, "so2")

    assert first.report.template_reused is False
    assert second.report.template_reused is True
    assert second.template_id == first.template_id
    # one template, a root branch as on Neon (what made the lookup by parent_id miss it)
    [template] = _templates(settings)
    assert template.id == first.template_id and template.parent_id is None


def test_a_schema_only_session_branch_refuses_a_reset_in_one_line(
    tmp_path: Path, own_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without a template the session's own branch is the schema-only (root) branch
    monkeypatch.setenv("CATHOUSE_TEMPLATE_REUSE", "0")
    settings = load_settings(copy_example(tmp_path / "project"))
    session = BranchSession(settings, run_id="so3")
    try:
        handle = session.start()
        assert handle.parent_id is None
        with pytest.raises(ConfigError) as caught:
            session.reset()
        with pytest.raises(ConfigError):
            session.fork_for_test()  # it would fork the session's own data, not the parent's
    finally:
        session.finish()
    line = caught.value.one_line()
    assert "\n" not in line and caught.value.exit_code == 2
    assert "CATHOUSE_SCHEMA_ONLY" in line and "template_reuse" in line
