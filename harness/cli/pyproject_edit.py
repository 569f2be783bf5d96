"""Put one table into a pyproject.toml by editing its text, so every other byte of the
file (comments, order, formatting) stays as its owner wrote it.

There is no TOML writer among our dependencies, and a round trip through one would
rewrite the whole file. The edit is checked instead: the file is parsed before and
after, and everything outside the table must read back exactly as before.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from cathouse_harness.errors import ConfigError, HarnessError

# a table header line: [a.b] or [[a.b]], an optional comment after it
_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*([^\[\]#]+?)[ \t]*\]\]?[ \t]*(?:#.*)?$")

Outcome = Literal["created", "added", "replaced"]


def lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _without(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of `data` without the table `dotted`, and without parents it leaves empty."""
    head, _, rest = dotted.partition(".")
    if head not in data:
        return data
    copy = dict(data)
    if not rest:
        del copy[head]
    elif isinstance(copy[head], dict):
        copy[head] = _without(copy[head], rest)
        if not copy[head]:
            del copy[head]
    return copy


def _key_path(inner: str) -> tuple[str, ...]:
    # quoted keys holding a dot are split wrongly here; the parse check below catches it
    return tuple(part.strip().strip("\"'") for part in inner.split("."))


def _owned_runs(lines: list[str], table: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) line ranges of the table and its sub-tables, each run of adjacent
    owned headers as one range; comments and blank lines right before the next foreign
    header stay with that header."""
    headers = []
    for index, line in enumerate(lines):
        match = _HEADER.match(line.rstrip("\r\n"))
        if match:
            headers.append((index, _key_path(match[1])[: len(table)] == table))
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index, owned in [*headers, (len(lines), False)]:
        if owned and start is None:
            start = index
        elif not owned and start is not None:
            end = index
            while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
                end -= 1
            runs.append((start, end))
            start = None
    return runs


def put_table(path: Path, table: str, block: str, *, force: bool) -> Outcome:
    """Write `block` (TOML text defining `table` and its sub-tables) into `path`: appended
    when the file lacks the table, in place of the old one with `force`."""
    if not path.exists():
        _write(path, block, mode=None)
        return "created"
    try:
        old_text = path.read_bytes().decode("utf-8")
        old_data = tomllib.loads(old_text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"is not valid TOML ({exc})", key=str(path), hint="fix it first") from None
    newline = "\r\n" if "\r\n" in old_text else "\n"
    new_block = block.replace("\n", newline)
    exists = lookup(old_data, table) is not None
    if exists and not force:
        raise ConfigError(
            f"already has a [{table}] table", key=str(path), hint="pass --force to replace that table"
        )
    if not exists:
        separator = "" if not old_text.strip() else (newline if old_text.endswith("\n") else newline * 2)
        new_text = old_text + separator + new_block
        outcome: Outcome = "added"
    else:
        lines = old_text.splitlines(keepends=True)
        runs = _owned_runs(lines, tuple(table.split(".")))
        if not runs:
            raise ConfigError(
                f"defines [{table}] inline or with dotted keys, which init does not edit",
                key=str(path), hint="remove it, then run init again",
            )
        kept = list(lines)
        for start, end in reversed(runs[1:]):
            del kept[start:end]
        first_start, first_end = runs[0]
        kept[first_start:first_end] = [new_block]
        new_text = "".join(kept)
        outcome = "replaced"
    _check_only_table_changed(path, table, old_data, new_text, block)
    _write(path, new_text, mode=stat.S_IMODE(path.stat().st_mode))
    return outcome


def _check_only_table_changed(
    path: Path, table: str, old_data: dict[str, Any], new_text: str, block: str
) -> None:
    try:
        new_data = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        new_data = None
    if (
        new_data is None
        or _without(new_data, table) != _without(old_data, table)
        or lookup(new_data, table) != lookup(tomllib.loads(block), table)
    ):
        raise HarnessError(
            f"{path}: could not put [{table}] in without changing the rest of the file; "
            "nothing was written",
            hint="add the table printed by `cathouse-branch init` by hand",
        )


def _write(path: Path, text: str, *, mode: int | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(text.encode("utf-8"))
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
