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


# Each case: the file's text before our table, our old table, and the text after it;
# `put_table` must leave the text around the table as it was, byte for byte.
KEPT_AROUND = {
    # quoted keys holding dots name one table each, not a path through ours;
    "quoted-dotted-keys": (
        '"tool.cathouse_harness" = "a root key named with dots"\n\n'
        '[tool."cathouse_harness.old"]\nkeep = 1\n\n',
        # a quoted key without a dot is the plain name: this sub-table is ours
        '[tool.cathouse_harness]\nconnection_limit = 4\n\n[tool."cathouse_harness".extra]\nx = 1\n',
        "\n[tool.'cathouse_harness.services']\nkeep = 2\n",
    ),
    # inline tables and arrays elsewhere, one of whose lines reads like our header
    "inline-tables-elsewhere": (
        '[project]\nname = "x"\nurls = { home = "https://example.invalid" }\n\n',
        '[tool.cathouse_harness]\nconnection_limit = 4\n',
        '\n[tool.other]\nmatrix = [\n    { python = "3.11", extras = ["a", "b"] },\n'
        '    ["tool.cathouse_harness"]\n]\nnested = { a = 1, b = { c = [1, 2] } }\n',
    ),
    # a header quoted inside a multi-line string is text, not a table
    "header-in-a-string": (
        '[tool.x]\ndoc = """\n[tool.cathouse_harness.services]\nkeep me\n"""\n\n',
        '[tool.cathouse_harness]\nconnection_limit = 4\n',
        "\n[tool.y]\nlines = '''\n[[tool.cathouse_harness.services]]\n'''\n",
    ),
    # comments, tabs and spacing the owner chose, around and inside the header line
    "comments-and-odd-spacing": (
        '#   top comment   \n[project]\nname   =   "x"    # spaced\n\n\n',
        '  [ tool . "cathouse_harness" ]   # ours, indented\nconnection_limit=4\n'
        "\t# a note inside ours\nsub = {a=1}\n",
        '\n\n\t# tab-indented note about ruff\n[tool.ruff]  \nline-length=90  # wide\n\n# the end',
    ),
}


@pytest.mark.parametrize(("before", "old_table", "after"), KEPT_AROUND.values(), ids=KEPT_AROUND.keys())
def test_replaces_only_our_table_and_keeps_every_other_byte(
    tmp_path: Path, before: str, old_table: str, after: str
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(before + old_table + after)
    with pytest.raises(ConfigError, match="already has a \\[tool.cathouse_harness\\] table"):
        put_table(path, TABLE, BLOCK, force=False)
    assert path.read_text() == before + old_table + after
    assert put_table(path, TABLE, BLOCK, force=True) == "replaced"
    assert path.read_text() == before + BLOCK + after


def test_adds_beside_a_quoted_key_that_only_looks_like_ours(tmp_path: Path) -> None:
    text = '[tool."cathouse_harness.services"]\nkeep = 1\n'
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    assert put_table(path, TABLE, BLOCK, force=False) == "added"
    assert path.read_text() == text + "\n" + BLOCK


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('[tool]\ncathouse_harness = { connection_limit = 4 }\n', ConfigError, "inline or with dotted keys"),
        ('tool.cathouse_harness.connection_limit = 4\n', ConfigError, "inline or with dotted keys"),
        # TOML lets a header add a sub-table to a table made with dotted keys; the new
        # [tool.cathouse_harness] header would then define that table twice
        (
            '[tool]\ncathouse_harness.connection_limit = 4\n\n[tool.cathouse_harness.extra]\nx = 1\n',
            HarnessError,
            "nothing was written",
        ),
    ],
    ids=["inline-table", "dotted-keys", "sub-table-of-dotted-keys"],
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
