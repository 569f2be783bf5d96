"""A home of its own for tests that must not share the session's local server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def own_home(tmp_path: Path) -> Iterator[Path]:
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.server import stop_local_server

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    yield home
    try:
        stop_local_server(home)
    except Exception as exc:  # the test's own outcome matters more than this cleanup
        print(f"could not stop the local server of {home}: {exc}")
    for directory in memory_bases(home):
        shutil.rmtree(directory, ignore_errors=True)
