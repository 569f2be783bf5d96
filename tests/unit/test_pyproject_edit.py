"""Putting one table into a pyproject.toml without touching any other byte."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cathouse_harness.cli.pyproject_edit import put_table
from cathouse_harness.errors import ConfigError, HarnessError

TABLE = "tool.cathouse_harness"
BLOCK = '[tool.cathouse_harness]\nconnection_limit = 10\n\n[[tool.cathouse_harness.services]]\nname = "a"\n'


def test_appends_after_a_file_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(b'[project]\nname = "x"')
    assert put_table(path, TABLE, BLOCK, force=False) == "added"
    assert path.read_text() == '[project]\nname = "x"\n\n' + BLOCK


def test_keeps_crlf_line_endings_and_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(b'[project]\r\nname = "x"\r\n')
    path.chmod(0o640)
    put_table(path, TABLE, BLOCK, force=False)
    assert path.read_bytes() == b'[project]\r\nname = "x"\r\n\r\n' + BLOCK.replace("\n", "\r\n").encode()
    assert path.stat().st_mode & 0o777 == 0o640


def test_replaces_scattered_parts_of_the_table_and_nothing_else(tmp_path: Path) -> None:
    before = '# top\n[project]\nname = "x"\n\n'
    old_table = '[tool.cathouse_harness]\nconnection_limit = 4  # old\n'
    middle = '\n# about ruff\n[tool.ruff]\nline-length = 90\n\n'
    old_service = '[[tool.cathouse_harness.services]]\nname = "old"\n'
    after = '\n[tool."other"]\nkey = "[tool.cathouse_harness]"\n'
    path = tmp_path / "pyproject.toml"
    path.write_text(before + old_table + middle + old_service + after)
    with pytest.raises(ConfigError, match="already has a \\[tool.cathouse_harness\\] table"):
        put_table(path, TABLE, BLOCK, force=False)
    assert put_table(path, TABLE, BLOCK, force=True) == "replaced"
    assert path.read_text() == before + BLOCK + middle + after
    assert tomllib.loads(path.read_text())["tool"]["cathouse_harness"]["services"] == [{"name": "a"}]


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('[tool]\ncathouse_harness = { connection_limit = 4 }\n', ConfigError, "inline"),
        # a header-like line inside a multi-line string fools the line scan; the parse
        # check after the edit catches it
        (
            '[tool.cathouse_harness]\nconnection_limit = 4\n'
            '[tool.x]\ndoc = """\n[tool.cathouse_harness.services]\nkeep me\n"""\n',
            HarnessError,
            "nothing was written",
        ),
    ],
    ids=["inline-table", "header-in-a-string"],
)
def test_refuses_and_leaves_the_file_as_it_was(
    tmp_path: Path, text: str, error: type[Exception], match: str
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(error, match=match):
        put_table(path, TABLE, BLOCK, force=True)
    assert path.read_text() == text


def test_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[project\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        put_table(path, TABLE, BLOCK, force=False)
