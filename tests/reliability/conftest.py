"""The reliability suite's shared pieces: a local Neon server of its own per module, and
the fault matrix's table at the end of the run (also under xdist, read from the workers'
JSON files)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability._support import LocalNeon, format_table

MATRIX_FILE = "fault-matrix.json"


@pytest.fixture(scope="module")
def neon_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home (and so a local server, cluster and project) for one test module."""
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.server import stop_local_server

    home = tmp_path_factory.mktemp("neon-home")
    yield home
    try:
        stop_local_server(home)
    finally:
        for directory in memory_bases(home):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def neon(neon_home: Path) -> Iterator[LocalNeon]:
    api = LocalNeon(neon_home)
    yield api
    try:
        api.set_faults("")
    except Exception:  # the server may be gone already; stopping it is neon_home's job
        pass


def _matrix_files(config: pytest.Config) -> list[Path]:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return []
    base = factory.getbasetemp()
    return sorted(base.glob(MATRIX_FILE)) + sorted(base.glob(f"*/{MATRIX_FILE}"))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # the controller prints what every worker wrote
    rows: list[dict[str, Any]] = []
    for path in _matrix_files(config):
        try:
            rows += json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    if not rows:
        return
    terminalreporter.section("fault matrix")
    for line in format_table(rows):
        terminalreporter.write_line(line)
    for path in _matrix_files(config):
        terminalreporter.write_line(f"written to {path}")
