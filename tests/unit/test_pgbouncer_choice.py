"""CATHOUSE_PGBOUNCER: which PgBouncer the embedded default runs, or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.pgbouncer import find_pgbouncer


def test_off_runs_without_pgbouncer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATHOUSE_PGBOUNCER", "off")
    assert find_pgbouncer() is None


def test_a_named_binary_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "pgbouncer"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("CATHOUSE_PGBOUNCER", str(binary))
    assert find_pgbouncer() == binary


def test_a_name_that_is_no_binary_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATHOUSE_PGBOUNCER", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as caught:
        find_pgbouncer()
    assert str(caught.value).startswith("CATHOUSE_PGBOUNCER (from environment): ")
    assert caught.value.exit_code == 2
