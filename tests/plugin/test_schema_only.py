"""`schema_only = true` across sessions, on a home and server of their own: as on Neon, a
schema-only branch is a root branch (no parent), so what the harness knows of it comes
from its name and its annotation, never from `parent_id`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cathouse_harness.branching.lifecycle import MARK_KIND, harness_branches
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.neon.backend import connect_backend, open_client
from cathouse_harness.neon.models import Branch
from cathouse_harness.session.branch_session import BranchSession

from tests.plugin._support import copy_example, home_of_its_own


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fresh home (so no template exists yet) and its own server, in schema-only mode."""
    with home_of_its_own(tmp_path, monkeypatch, CATHOUSE_SCHEMA_ONLY="1") as home:
        yield home


def _templates(settings: Settings) -> list[Branch]:
    async def listed() -> list[Branch]:
        backend = connect_backend(settings)
        async with open_client(backend) as client:
            return await harness_branches(client, backend.project_id)

    return [b for b in asyncio.run(listed()) if b.annotation.get(MARK_KIND) == "template"]


def _session(settings: Settings, run_id: str, *, reset: bool = False) -> BranchSession:
    session = BranchSession(settings, run_id=run_id)
    try:
        session.start()
        if reset:
            session.reset()
    finally:
        session.finish()
    assert session.report.delete_failed == []
    return session


def test_a_second_schema_only_session_reuses_the_root_template(tmp_path: Path, own_home: Path) -> None:
    settings = load_settings(copy_example(tmp_path / "project"))
    assert settings.schema_only and settings.template_reuse

    first = _session(settings, "so1")
    second = _session(settings, "so2", reset=True)  # its branch is the template's child

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


def test_a_template_build_reads_each_service_s_setup_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fingerprint and the template's migration share one read of each service's
    Alembic setup (`cathouse_harness.migrate.run_memo`): the migration runs in a thread of the session's
    loop, which sees the setup's memo through the context the session hands it."""
    import cathouse_harness.branching.fingerprint as fingerprint

    reads: list[Path | None] = []
    read_section = fingerprint._read_alembic_section

    def counting(ini: Path | None):  # type: ignore[no-untyped-def]
        reads.append(ini)
        return read_section(ini)

    monkeypatch.setattr(fingerprint, "_read_alembic_section", counting)
    with home_of_its_own(tmp_path, monkeypatch):
        settings = load_settings(copy_example(tmp_path / "project"))
        session = _session(settings, "rd1")
    assert session.report.template_reused is False  # built: fingerprint and migration
    assert session.report.migrated_services == len(settings.migrating_services)
    assert sorted(map(str, reads)) == sorted(str(s.alembic_ini) for s in settings.migrating_services)
