"""The one decoder the Neon models share: dataclass fields read from JSON objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cathouse_harness.neon.decode import NOT_IN_ANSWERS, api, decode
from cathouse_harness.support.redact import Secret, scrub


@dataclass(frozen=True)
class Leaf:
    name: str
    size: int = 0


@dataclass(frozen=True)
class Upper:
    """A leaf whose own `from_api` adds to what its fields read."""

    name: str

    @classmethod
    def from_api(cls, data: Any) -> Upper:
        return cls(name=str(data.get("name", "")).upper())


@dataclass(frozen=True)
class Tree:
    id: str
    label: str = "unnamed"
    note: str | None = None
    port: int | None = None
    open: bool = False
    count: int = 7
    at: datetime | None = None
    token: Secret | None = field(default=None, repr=False)
    kind: str = field(default="plain", metadata=api(key=("kind", "type")))
    keys: int = field(default=0, metadata=api(whole=True, read=len))
    root: Leaf = field(default=Leaf("none"))
    leaves: tuple[Leaf, ...] = ()
    uppers: tuple[Upper, ...] = ()
    local: str = field(default="ours", metadata=NOT_IN_ANSWERS)


@dataclass(frozen=True)
class Holder:
    leaf: Leaf


@dataclass(frozen=True)
class Unreadable:
    things: list[str]


def test_unknown_keys_are_ignored_and_missing_ones_keep_their_defaults() -> None:
    tree = decode(Tree, {"brand_new": {"x": 1}, "label": None, "note": ""})
    # `id` has no default: its type's empty value; null and "" count as missing
    assert tree == Tree(id="", keys=3)


def test_values_are_converted_by_their_type_hints() -> None:
    tree = decode(Tree, {
        "id": 42, "note": 5, "port": "5432", "open": 1, "count": "3",
        "at": "2025-03-04T10:00:00.123456789Z", "token": "tok-decode-test-7f3a",
    })
    assert (tree.id, tree.note, tree.port, tree.open, tree.count) == ("42", "5", 5432, True, 3)
    assert tree.at == datetime(2025, 3, 4, 10, 0, 0, 123456, tzinfo=UTC)
    assert isinstance(tree.token, Secret) and tree.token.reveal() == "tok-decode-test-7f3a"
    assert scrub("tok-decode-test-7f3a") == "***"  # registered as it was read


def test_values_of_the_wrong_kind_fall_back_instead_of_failing() -> None:
    tree = decode(Tree, {"id": "t", "port": "not a port", "count": [1], "at": "yesterday", "root": "leaf"})
    assert (tree.port, tree.count, tree.at, tree.root) == (None, 7, None, Leaf("none"))


def test_renamed_keys_take_the_first_one_present() -> None:
    assert decode(Tree, {"type": "old"}).kind == "old"
    assert decode(Tree, {"type": "old", "kind": "new"}).kind == "new"
    assert decode(Tree, {"type": "old", "kind": None}).kind == "old"


def test_nested_models_and_lists_of_them() -> None:
    tree = decode(Tree, {
        "root": {"name": "r", "size": 2, "extra": True},
        "leaves": [{"name": "a"}, "not an object", None, {"name": "b", "size": "9"}],
        "uppers": [{"name": "x"}],
    })
    assert tree.root == Leaf("r", 2)
    assert tree.leaves == (Leaf("a"), Leaf("b", 9))
    # a nested model's own from_api reads it
    assert tree.uppers == (Upper("X"),)
    assert decode(Tree, {"leaves": {"name": "a"}}).leaves == ()
    # a nested model without a default is read from an empty object when it is missing
    assert decode(Holder, {}) == decode(Holder, {"leaf": None}) == Holder(Leaf(""))


def test_given_fields_are_taken_and_fields_no_answer_carries_are_not_read() -> None:
    tree = decode(Tree, {"id": "from-answer", "local": "from-answer"}, id="given")
    assert (tree.id, tree.local) == ("given", "ours")
    assert decode(Tree, {}, local="given").local == "given"


def test_a_field_without_a_reader_is_named() -> None:
    with pytest.raises(TypeError, match=r"Unreadable\.things: no reader for list\[str\]"):
        decode(Unreadable, {"things": ["a"]})
