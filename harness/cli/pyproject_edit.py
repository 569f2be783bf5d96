"""Put one table into a pyproject.toml so that every other byte of the file (comments,
order, spacing) stays as its owner wrote it.

tomlkit reads the file: it keeps every byte of what it parses, so its idea of where each
table header stands is TOML's own (quoted keys holding dots, headers quoted inside
multi-line strings, inline tables and arrays are read as TOML reads them). From that
reading we learn which stretches of the text belong to the table and its sub-tables and
put the new text in their place. We splice text instead of letting tomlkit render the
edited document because tomlkit files the comments and blank lines before a header under
the table above it: replacing ours through tomlkit would drop the comment that introduces
the next table, and it adds blank lines of its own.

The result is checked before anything is written: outside the table the text must be the
old text byte for byte, and tomllib must read everything outside the table back as before
and the table as given.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import tomlkit
from cathouse_harness.errors import ConfigError, HarnessError
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Item, Key, Table

Outcome = Literal["created", "added", "replaced"]
KeyPath = tuple[str, ...]
Span = tuple[int, int]

# TOML text cannot hold a NUL, so a marker made of them never meets the owner's bytes
_MARK = "\x00"


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


def _tables(body: list[tuple[Key | None, Item]], prefix: KeyPath) -> Iterator[tuple[KeyPath, Table]]:
    """Every table in a tomlkit body, nested ones and array-of-tables elements included,
    with its key path (each part unquoted, as TOML means it)."""
    for key, item in body:
        if key is None:
            continue
        path = (*prefix, key.key)
        elements = item.body if isinstance(item, AoT) else [item] if isinstance(item, Table) else []
        for table in elements:
            yield path, table
            yield from _tables(table.value.body, path)


def _sections(text: str) -> list[tuple[KeyPath | None, int, int]] | None:
    """The text cut before every table header: (the header's key path, start, end); the
    part before the first header has no path. None when tomlkit cannot read the text back
    byte for byte with the cuts marked."""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError:
        return None
    # Each table's indent is rendered just before its header (if it has one): a numbered
    # marker there tells, after rendering, where each header starts in the text.
    paths: list[KeyPath] = []
    for path, table in _tables(document.body, ()):
        table.trivia.indent = f"{_MARK}{len(paths)}{_MARK}{table.trivia.indent}"
        paths.append(path)
    pieces = document.as_string().split(_MARK)  # text, number, text, number, text ...
    if "".join(pieces[0::2]) != text:
        return None
    sections: list[tuple[KeyPath | None, int, int]] = [(None, 0, len(pieces[0]))]
    for number, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        start = sections[-1][2]
        sections.append((paths[int(number)], start, start + len(piece)))
    return sections


def _owned_spans(text: str, table: KeyPath) -> list[Span] | None:
    """(start, end) offsets of the table and its sub-tables, each run of adjacent owned
    sections as one span; comments and blank lines at a run's end stay outside it, with
    the header they stand before. None when the text cannot be cut (see `_sections`)."""
    sections = _sections(text)
    if sections is None:
        return None
    spans: list[Span] = []
    for path, start, end in sections:
        if path is None or path[: len(table)] != table:
            continue
        if spans and spans[-1][1] == start:
            start = spans.pop()[0]
        spans.append((start, end))
    return [(start, _before_trailing_notes(text, start, end)) for start, end in spans]


def _before_trailing_notes(text: str, start: int, end: int) -> int:
    """`end` moved back over the blank and comment lines that close text[start:end],
    never over its first line (the header). Lines end at "\n" only, as in TOML."""
    while (cut := text.rfind("\n", start, end - 1)) != -1:
        line = text[cut + 1 : end].strip()
        if line and not line.startswith("#"):
            break
        end = cut + 1
    return end


def _splice(text: str, spans: list[Span], first: str = "") -> str:
    """`text` without `spans`, with `first` where the first of them stood."""
    kept, at = [], 0
    for index, (start, end) in enumerate(spans):
        kept += [text[at:start], "" if index else first]
        at = end
    return "".join(kept) + text[at:]


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
    key_path = tuple(table.split("."))
    outcome: Outcome
    if not exists:
        separator = "" if not old_text.strip() else (newline if old_text.endswith("\n") else newline * 2)
        new_text = old_text + separator + new_block
        outcome = "added"
    else:
        spans = _owned_spans(old_text, key_path)
        if spans is None:
            raise _cannot_place(path, table)
        if not spans:
            raise ConfigError(
                f"defines [{table}] inline or with dotted keys, which init does not edit",
                key=str(path), hint="remove it, then run init again",
            )
        separator = ""
        new_text = _splice(old_text, spans, new_block)
        outcome = "replaced"
    _check_only_table_changed(path, table, (old_text, old_data), new_text, block, separator)
    _write(path, new_text, mode=stat.S_IMODE(path.stat().st_mode))
    return outcome


def _check_only_table_changed(
    path: Path,
    table: str,
    old: tuple[str, dict[str, Any]],
    new_text: str,
    block: str,
    separator: str,
) -> None:
    """Outside the table the bytes are the old ones (plus the `separator` put before an
    added table), and both reads agree that only the table changed."""
    old_text, old_data = old
    key_path = tuple(table.split("."))
    old_spans = _owned_spans(old_text, key_path)
    new_spans = _owned_spans(new_text, key_path)
    try:
        new_data: dict[str, Any] | None = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        new_data = None
    if (
        old_spans is None
        or new_spans is None
        or _splice(new_text, new_spans) != _splice(old_text, old_spans) + separator
        or new_data is None
        or _without(new_data, table) != _without(old_data, table)
        or lookup(new_data, table) != lookup(tomllib.loads(block), table)
    ):
        raise _cannot_place(path, table)


def _cannot_place(path: Path, table: str) -> HarnessError:
    return HarnessError(
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
