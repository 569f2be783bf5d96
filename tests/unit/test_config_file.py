"""CATHOUSE_CONFIG: the harness's table from a file outside the project's tracked files.

A project we may not edit (a public backend run on a branch, a colleague's checkout) is
configured by naming a TOML file; its `[tool.cathouse_harness]` stands in for the one in
the project's pyproject.toml, and the paths in it stay relative to the project root.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError

OUTSIDE = """
[tool.cathouse_harness]
parent_branch = "from-file"

[[tool.cathouse_harness.services]]
name = "backend"
schema = "public"
alembic_ini = "alembic.ini"
"""


def their_project(root: Path, table: str = "") -> Path:
    """A project as its authors keep it: a pyproject.toml of their own (with or without
    our table) and an alembic.ini at its root."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "theirs"\nversion = "0"\n{table}')
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    return root


def test_the_named_file_configures_a_project_whose_files_are_untouched(tmp_path: Path) -> None:
    root = their_project(tmp_path / "theirs")
    config = tmp_path / "elsewhere" / "cathouse.toml"
    config.parent.mkdir()
    config.write_text(OUTSIDE)
    before = (root / "pyproject.toml").read_text()

    settings = load_settings(root, environ={"CATHOUSE_CONFIG": str(config)})

    assert settings.project_root == root.resolve()
    assert settings.parent_branch == "from-file"
    # paths are the project's, not the file's directory's
    assert [s.alembic_ini for s in settings.services] == [(root / "alembic.ini").resolve()]
    assert str(config) in settings.source_of("parent_branch")
    assert (root / "pyproject.toml").read_text() == before
    # without the variable the same project has no services: the file was the only source
    assert load_settings(root, environ={}).services == ()


def test_the_file_replaces_the_pyproject_table_and_the_environment_still_wins(tmp_path: Path) -> None:
    root = their_project(tmp_path / "theirs", '\n[tool.cathouse_harness]\nparent_branch = "theirs"\n')
    config = tmp_path / "cathouse.toml"
    config.write_text('[tool.cathouse_harness]\ndatabase = "cats"\n')
    settings = load_settings(root, environ={"CATHOUSE_CONFIG": str(config)})
    assert settings.database == "cats"
    assert settings.parent_branch == "main"  # not merged with the project's own table
    environ = {"CATHOUSE_CONFIG": str(config), "CATHOUSE_DATABASE": "dogs"}
    assert load_settings(root, environ=environ).database == "dogs"


def test_a_relative_name_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = their_project(tmp_path / "theirs")
    (tmp_path / "cathouse.toml").write_text(OUTSIDE)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(root, environ={"CATHOUSE_CONFIG": "cathouse.toml"})
    assert settings.parent_branch == "from-file"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "is not a file"),
        ("[tool.other]\nx = 1\n", "has no [tool.cathouse_harness] table"),
        ("[tool.cathouse_harness\n", "is not valid TOML"),
        ("[tool.cathouse_harness]\nparent = 'x'\n", "unknown key 'parent'"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, content: str | None, needle: str) -> None:
    root = their_project(tmp_path / "theirs")
    config = tmp_path / "cathouse.toml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(root, environ={"CATHOUSE_CONFIG": str(config)})
    text = str(caught.value)
    assert needle in text and str(config) in text and "\n" not in text
    assert caught.value.exit_code == 2
