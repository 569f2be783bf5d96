"""The xdist controller's end-of-run sweep (`cathouse_harness.cleanup.sweep.sweep_run`): it deletes what a
run left behind, and asks the API nothing when every worker cleaned up after itself."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

from cathouse_harness.branching.lifecycle import harness_branches
from cathouse_harness.cleanup.runs import DELETING, kept_marker, marker_dir
from cathouse_harness.cleanup.sweep import sweep_run
from cathouse_harness.config.settings import load_settings
from cathouse_harness.local.discovery import running_server
from cathouse_harness.neon.backend import connect_backend, open_client

from tests.plugin._support import copy_example, session_branch_of_run


def test_clean_run_is_swept_without_the_api(tmp_path: Path, monkeypatch) -> None:
    # A home of its own with no server: any API use would have to start one.
    home = tmp_path / "home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    settings = load_settings(copy_example(tmp_path / "project"))
    for worker in ("gw0", "gw1"):
        marker_dir(settings, "clean1", worker).mkdir(parents=True)
    kept_marker(settings, "clean1", "br-kept-on-purpose").write_text("harness/clean1/gw0")

    assert sweep_run(settings, "clean1", all_finished=True) == []
    assert not (settings.home / "runs" / "clean1").exists()
    assert running_server(home) is None


def test_recorded_branch_is_swept_even_when_workers_say_they_finished(tmp_path: Path) -> None:
    settings = load_settings(copy_example(tmp_path / "project"))
    backend = connect_backend(settings)

    async def leave_one() -> str:
        async with open_client(backend) as client:
            left = await session_branch_of_run(
                client, backend.project_id, settings, name="harness/sweep1/gw0", run_id="sweep1",
                ttl=timedelta(minutes=5),
            )
            return left.id

    left = asyncio.run(leave_one())
    # what a worker that died before its teardown leaves: the marker of its branch
    directory = marker_dir(settings, "sweep1", "gw0")
    directory.mkdir(parents=True)
    (directory / left).write_text(json.dumps({"project_id": backend.project_id}))

    assert sweep_run(settings, "sweep1", all_finished=True) == [left]

    async def remaining() -> list[str]:
        async with open_client(backend) as client:
            return [b.id for b in await harness_branches(client, backend.project_id, run_id="sweep1")]

    assert asyncio.run(remaining()) == []
    assert not (settings.home / "runs" / "sweep1").exists()


def test_a_clean_run_keeps_only_the_deletes_its_watchdog_still_confirms(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(tmp_path / "home"))
    settings = load_settings(copy_example(tmp_path / "project"))
    confirming, done = marker_dir(settings, "clean2", "controller"), marker_dir(settings, "clean2", "gw0")
    confirming.mkdir(parents=True)
    done.mkdir(parents=True)
    (confirming / f"{DELETING}br-being-deleted").write_text(json.dumps({"project_id": "p"}))

    # nothing owned: no API call, and the controller's watchdog finds its marker still there
    assert sweep_run(settings, "clean2", all_finished=True) == []
    assert [p.name for p in confirming.iterdir()] == [f"{DELETING}br-being-deleted"]
    assert not done.exists()
    assert running_server(settings.home) is None


def test_an_interrupted_run_without_a_server_starts_none_to_sweep(tmp_path: Path, monkeypatch) -> None:
    """The embedded default's in-memory branches go with its server (here: a Ctrl-C
    stopped its start). Starting one only to find none took seconds and left it running."""
    home = tmp_path / "home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    settings = load_settings(copy_example(tmp_path / "project"))
    directory = marker_dir(settings, "gone1", "gw0")
    directory.mkdir(parents=True)
    (directory / "br-gone-with-its-server").write_text(json.dumps({"project_id": "p"}))

    assert sweep_run(settings, "gone1", all_finished=False) == []
    assert running_server(home) is None
    assert not (settings.home / "runs" / "gone1").exists()
