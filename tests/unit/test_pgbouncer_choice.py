"""CATHOUSE_PGBOUNCER: which PgBouncer the embedded default runs, or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from cathouse_harness.errors import ConfigError
from cathouse_harness.local.data.pgbouncer import (
    PgBouncer,
    carries_prepared_statements,
    find_pgbouncer,
    pgbouncer_version,
    pooler_mode,
)
from cathouse_harness.local.pg_binaries import resolve_os_user


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


def _binary_saying(tmp_path: Path, text: str) -> Path:
    binary = tmp_path / "pgbouncer"
    binary.write_text(f"#!/bin/sh\necho '{text}'\n")
    binary.chmod(0o755)
    return binary


@pytest.mark.parametrize(
    ("says", "version", "carried"),
    [
        ("PgBouncer 1.18.0\nlibevent 2.1.12-stable", (1, 18, 0), False),
        ("PgBouncer 1.21.0", (1, 21, 0), True),
        ("PgBouncer 1.24.1\nadns: c-ares 1.34.5", (1, 24, 1), True),
        ("something else", None, False),
    ],
)
def test_prepared_statements_follow_the_version(
    tmp_path: Path, says: str, version: tuple[int, ...] | None, carried: bool
) -> None:
    found = pgbouncer_version(_binary_saying(tmp_path, says))
    assert found == version
    assert carries_prepared_statements(found, "transaction") is carried
    # session pooling keeps a client on its server connection, statements included
    assert carries_prepared_statements(found, "session") is True


@pytest.mark.parametrize(("says", "expected"), [("PgBouncer 1.18.0", None), ("PgBouncer 1.22.1", "1000")])
def test_the_ini_turns_on_prepared_statements_where_pgbouncer_has_them(
    tmp_path: Path, says: str, expected: str | None
) -> None:
    bouncer = PgBouncer(
        _binary_saying(tmp_path, says), tmp_path / "run", user=resolve_os_user(),
        pg_host="127.0.0.1", pg_port=5432, socket_dir=tmp_path / "run", mode="transaction",
    )
    (tmp_path / "run").mkdir(mode=0o700)
    bouncer._write_files()
    settings = dict(
        line.split(" = ", 1) for line in bouncer.ini.read_text().splitlines() if " = " in line
    )
    assert settings["pool_mode"] == "transaction"
    assert settings.get("max_prepared_statements") == expected


def test_the_pool_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATHOUSE_POOLER_MODE", raising=False)
    assert pooler_mode() == "transaction"
    monkeypatch.setenv("CATHOUSE_POOLER_MODE", "Session")
    assert pooler_mode() == "session"
    monkeypatch.setenv("CATHOUSE_POOLER_MODE", "statement")
    with pytest.raises(ConfigError) as caught:
        pooler_mode()
    assert caught.value.exit_code == 2 and "CATHOUSE_POOLER_MODE" in str(caught.value)
