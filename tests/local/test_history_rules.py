"""The local history's rules on a clock the test moves (`cathouse_harness.local.control.history`): which
moments of a branch the server can still produce, and which it refuses. The data plane
here only answers LSNs; `tests/local/test_history.py` drives the same rules through the
HTTP API on real PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from cathouse_harness.errors import ApiError
from cathouse_harness.local.control.history import HISTORY_RETENTION_SECONDS, History, PointInTime
from cathouse_harness.local.control.state import BranchRecord, DatabaseRecord, EndpointRecord, iso

START = 1_900_000_000.0


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Wal:
    position: int = 0x1000

    async def current_lsn(self, branch_id: str | None = None) -> str:
        self.position += 0x100
        return f"0/{self.position:X}"


@dataclass
class Project:
    """What the history reads of the control plane."""

    branches: dict[str, BranchRecord] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    dataplane: Wal = field(default_factory=Wal)

    @property
    def state(self) -> Project:
        return self

    def live_branches(self) -> list[BranchRecord]:
        return [b for b in self.branches.values() if not b.deleting]

    def add(self, branch_id: str, *, stamp: float = START) -> BranchRecord:
        text = iso(datetime.fromtimestamp(stamp, UTC))
        branch = BranchRecord(branch_id, branch_id, branch_id, None, text, text)
        branch.databases["db"] = DatabaseRecord(1, "db", "owner", text, text, branch_id)
        self.branches[branch_id] = branch
        self.endpoints[f"ep-{branch_id}"] = EndpointRecord(f"ep-{branch_id}", branch_id, text, text)
        return branch


def at(moment: float) -> PointInTime:
    return PointInTime(timestamp=datetime.fromtimestamp(moment, UTC).isoformat())


async def settle() -> None:
    for _ in range(3):  # the LSN reads run as tasks
        await asyncio.sleep(0)


async def connected(clock: Clock, history: History, endpoint: str, start: float, end: float) -> None:
    """A client on `endpoint` from `start` to `end` (seconds after START)."""
    clock.now = START + start
    history.observe({endpoint: 1})
    clock.now = START + end
    history.observe({})
    await settle()


def setup() -> tuple[Clock, Project, History, BranchRecord]:
    clock, project = Clock(), Project()
    history = History(project, clock=clock)  # type: ignore[arg-type]
    return clock, project, history, project.add("base")


def refused(history: History, branch: BranchRecord, point: PointInTime, words: str) -> None:
    with pytest.raises(ApiError) as caught:
        history.locate(branch, point)
    assert caught.value.status == 400 and words in str(caught.value), str(caught.value)


async def test_a_branch_is_its_current_state_back_to_its_last_change() -> None:
    clock, project, history, base = setup()
    await connected(clock, history, "ep-base", 10, 20)
    clock.now = START + 30
    assert history.locate(base, at(START + 25)).source is base
    refused(history, base, at(START + 15), "no kept state")
    refused(history, base, at(START + 5), "no kept state")
    # while a client is connected, not even a moment ago is known
    history.observe({"ep-base": 1})
    refused(history, base, at(START + 29), "a client is connected")


async def test_an_unchanged_copy_keeps_its_source_as_it_was() -> None:
    clock, project, history, base = setup()
    clock.now = START + 10
    copy = project.add("copy", stamp=clock.now)
    history.begin("copy", "base")
    clock.now = START + 11
    history.copied("copy")
    await settle()
    await connected(clock, history, "ep-base", 20, 21)  # the source is written after the copy
    assert history.locate(base, at(START + 5)).source is copy
    lsn = history.marks["copy"].copy_lsn
    assert lsn is not None and history.locate(base, PointInTime(lsn=lsn)).source is copy
    refused(history, base, at(START + 15), "no kept state")  # after the copy, before the write
    # once the copy is used, it no longer holds the source's past
    clock.now = START + 30
    history.observe({"ep-copy": 1})
    refused(history, base, at(START + 5), "no kept state")


async def test_a_copy_does_not_cover_a_change_of_its_source_before_it_was_made() -> None:
    clock, project, history, base = setup()
    await connected(clock, history, "ep-base", 5, 6)
    clock.now = START + 10
    project.add("copy", stamp=clock.now)
    history.begin("copy", "base")
    history.copied("copy")
    await settle()
    clock.now = START + 20
    history.observe({"ep-base": 1})
    refused(history, base, at(START + 3), "no kept state")
    assert history.locate(base, at(START + 7)).source.id == "copy"


async def test_catalog_changes_count_as_changes() -> None:
    clock, project, history, base = setup()
    clock.now = START + 40
    base.databases["db"].updated_at = iso(datetime.fromtimestamp(START + 30, UTC))
    refused(history, base, at(START + 20), "no kept state")
    assert history.locate(base, at(START + 35)).source is base


async def test_moments_outside_the_window_or_in_the_future_are_refused() -> None:
    clock, project, history, base = setup()
    clock.now = START + HISTORY_RETENTION_SECONDS + 100
    refused(history, base, at(START + 50), "retention")
    refused(history, base, at(clock.now + 60), "future")
    refused(history, base, PointInTime(lsn="FFFF/0"), "no kept state")
    with pytest.raises(ApiError, match="future"):
        history.locate(base, PointInTime(lsn="FFFF/0"), current_lsn=0x2000)
