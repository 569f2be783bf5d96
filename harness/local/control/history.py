"""What the local server knows of its branches' past, for `parent_timestamp` /
`parent_lsn` on a create and `source_timestamp` / `source_lsn` on a restore.

Neon keeps every change (its WAL) for the project's history retention window and can
produce any point in it. The local server keeps no WAL history and makes no extra copy
(the fork path stays as it was). What it does know is when a branch's data can have
changed: while a client is connected to one of its endpoints (every connection passes
the endpoint's listener, which reports each connect and leave), when the server itself
rewrote it (a create's copy, a restore), and when its catalog changed (the records'
stamps). So it can still produce a branch's state at a moment T when

- nothing changed the branch since T: its current state (in particular "now"), or
- a branch was copied from it at some moment S >= T, nothing changed the branch between
  T and S, and nothing has changed that copy since (a fork the tests have not used yet,
  the template a session branch came from): that copy's current state.

Any other moment is refused with one line saying which moments the server still has.
LSNs are PostgreSQL's own (`pg_current_wal_insert_lsn()`, read after each change above):
an LSN at or after the one read after a branch's last change names its current state,
and a copy's `parent_lsn` names the state it was copied as. Moments before the server
started and older than HISTORY_RETENTION_SECONDS (the project's advertised
`history_retention_seconds`) are outside the history.

Cost: a walk over the endpoints with clients on each client connect and leave, and one
`pg_current_wal_insert_lsn()` query in a background task once a branch has been quiet
for SETTLE_DELAY or after a copy; nothing on a request's path unless the request names
an LSN (`benchmarks/history_cost.py` measures a client's connection with and without).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from cathouse_harness.errors import ApiError
from cathouse_harness.local.control.state import BranchRecord, iso, parse_time
from cathouse_harness.support.log import get_logger

if TYPE_CHECKING:
    from cathouse_harness.local.control.core import NeonCore

log = get_logger("local.history")

# Neon's default for a paid plan's project (1 day); the local history costs nothing to
# keep, so the window only bounds what it remembers of connections.
HISTORY_RETENTION_SECONDS = 86400
# Connection intervals remembered per branch; older ones are merged into one.
MAX_INTERVALS = 256
# A client's "now" may be sent a moment after the server's clock passed it.
CLOCK_SLACK = 1.0
# The LSN after a branch's last client left is read once it has been quiet this long: a
# read per leave cost a client ~1.3 ms a connection (benchmarks/history_cost.py) when
# tests connect back to back; reading later only makes the LSN more conservative.
SETTLE_DELAY = 0.2
LSN_PATTERN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class PointInTime:
    """A moment a request names: one of an RFC 3339 timestamp or an LSN (`0/16B3748`)."""

    timestamp: str | None = None
    lsn: str | None = None


@dataclass(frozen=True)
class Located:
    """Where the state at a moment is: `source`'s current databases hold it."""

    source: BranchRecord
    timestamp: str | None
    lsn: str | None
    # The moment of the branch asked about that this state is (epoch seconds).
    moment: float
    # Not `source`'s current state: its state at the point, replayed from its WAL by a
    # data plane that keeps one (an instance per branch, `compute.moments.pitr`).
    replay: bool = False


@dataclass
class Mark:
    """What the history knows of one branch's current data (epoch seconds)."""

    started: float
    # The branch (and its moment) this data began as a copy of; None for a root.
    copy_of: str | None = None
    copy_at: float = 0.0
    # When the copy was complete (infinite until then: not yet usable as history).
    copied: float = math.inf
    # An LSN naming the state copied, once read (the parent was quiet until it was).
    copy_lsn: str | None = None
    # Intervals during which clients were connected: [start, end], end infinite while open.
    busy: list[list[float]] = field(default_factory=list)
    # The LSN read after the last change, and when that read was sent.
    settled_lsn: str | None = None
    settled_at: float = math.inf
    generation: int = 0
    # The copy is the source replayed to `copy_at` (`Located.replay`): it holds that
    # moment whatever the source did around it, not only while the source was quiet.
    exact: bool = False


def replay_later(dataplane: object, physicals: list[str], moment: float, lsn: str | None) -> None:
    """Tell a data plane that replays (it said `replayable`) that the copies `physicals`
    are their templates as of the point, not as they are now."""
    cast(Any, dataplane).replay_for(physicals, moment, lsn)


def _error(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


class History:
    def __init__(self, neon: NeonCore, *, clock: Callable[[], float] = time.time) -> None:
        self.neon = neon
        self.clock = clock
        self.started = clock()
        self.marks: dict[str, Mark] = {}
        # Branches with a client connected, as last observed.
        self._busy: set[str] = set()
        # The pending LSN reads of branches whose last client left (SETTLE_DELAY).
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ recording

    def mark(self, branch_id: str) -> Mark:
        found = self.marks.get(branch_id)
        if found is None:  # a branch from before this server started: nothing known
            found = self.marks[branch_id] = Mark(started=self.started)
        return found

    def begin(
        self, branch_id: str, copy_of: str | None, copy_at: float | None = None, *, exact: bool = False
    ) -> Mark:
        """`branch_id`'s data is (being) replaced by a copy of `copy_of` as of `copy_at`
        (`exact`: replayed to that moment)."""
        moment = self.clock()
        self.marks[branch_id] = mark = Mark(
            started=moment, copy_of=copy_of, copy_at=moment if copy_at is None else copy_at,
            exact=exact and copy_at is not None,
        )
        return mark

    def copied(
        self, branch_id: str, copy_lsn: str | None = None, named: Callable[[str], None] | None = None
    ) -> None:
        """The copy `begin` announced is complete: read the LSN after it, which names
        the copied state when the source did not change meanwhile (then `named(lsn)`)."""
        mark = self.mark(branch_id)
        mark.copied = self.clock()
        mark.copy_lsn = copy_lsn
        self._settle(branch_id, mark, name_copy=copy_lsn is None, named=named)

    def move(self, old_id: str, new_id: str) -> None:
        """A restore's `preserve_under_name`: the data and what is known of it move."""
        if old_id in self.marks:
            self.marks[new_id] = self.marks.pop(old_id)

    def forget(self, branch_id: str) -> None:
        self.marks.pop(branch_id, None)
        self._busy.discard(branch_id)
        pending = self._pending.pop(branch_id, None)
        if pending is not None:
            pending.cancel()

    def observe(self, connections: dict[str, int]) -> None:
        """A client connected or left (`connections`: the endpoints that have open
        client connections, with their counts): open or close busy intervals."""
        moment = self.clock()
        endpoints = self.neon.state.endpoints
        connected: set[str] = set()
        for endpoint_id, count in connections.items():
            ep = endpoints.get(endpoint_id)
            if ep is not None and count:
                connected.add(ep.branch_id)
        for branch_id in connected - self._busy:
            pending = self._pending.pop(branch_id, None)
            if pending is not None:
                pending.cancel()
            mark = self.mark(branch_id)
            mark.busy.append([moment, math.inf])
            mark.settled_lsn, mark.settled_at = None, math.inf
            mark.generation += 1
            self._prune(mark, moment)
        # the last client left (or its endpoint closed under it)
        for branch_id in self._busy - connected:
            mark = self.mark(branch_id)
            if mark.busy and mark.busy[-1][1] == math.inf:
                mark.busy[-1][1] = moment
                self._pending[branch_id] = asyncio.get_running_loop().call_later(
                    SETTLE_DELAY, self._settle_later, branch_id, mark
                )
        self._busy = connected

    def _settle_later(self, branch_id: str, mark: Mark) -> None:
        self._pending.pop(branch_id, None)
        self._settle(branch_id, mark)

    def _prune(self, mark: Mark, moment: float) -> None:
        horizon = moment - HISTORY_RETENTION_SECONDS
        mark.busy = [span for span in mark.busy if span[1] >= horizon]
        if len(mark.busy) > MAX_INTERVALS:  # one span over the oldest: coarser, still safe
            merged = [mark.busy[0][0], mark.busy[-MAX_INTERVALS][1]]
            mark.busy = [merged, *mark.busy[-MAX_INTERVALS + 1 :]]

    def _settle(
        self,
        branch_id: str,
        mark: Mark,
        *,
        name_copy: bool = False,
        named: Callable[[str], None] | None = None,
    ) -> None:
        """Read the WAL position after a change, in the background."""
        generation = mark.generation

        async def read() -> None:
            sent = self.clock()
            source = self.neon.state.branches.get(mark.copy_of or "")
            dataplane = self.neon.dataplane
            try:
                lsn = copied_lsn = await dataplane.current_lsn(branch_id)
                # with an instance per branch, each has its own WAL: the copied state is
                # named by its source's position (unchanged since, when quiet)
                if name_copy and source is not None and getattr(dataplane, "lsn_per_branch", False):
                    copied_lsn = await dataplane.current_lsn(source.id)
            except Exception as exc:  # the history is only less complete
                log.debug("no LSN for branch %s: %s", branch_id, exc.__class__.__name__)
                return
            if self.marks.get(branch_id) is not mark or mark.generation != generation:
                return
            mark.settled_lsn, mark.settled_at = lsn, sent
            if name_copy and source is not None and self.quiet(source, mark.copy_at, self.clock()):
                mark.copy_lsn = copied_lsn
                if named is not None:
                    named(copied_lsn)

        task = asyncio.get_running_loop().create_task(read())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sample(self, branch_id: str | None = None) -> int:
        """PostgreSQL's WAL position now (a request naming an LSN is checked against it):
        that of `branch_id`'s instance (the default branch's when None) on a data plane
        with an instance per branch."""
        return lsn_value(await self.neon.dataplane.current_lsn(branch_id))

    # ------------------------------------------------------------------ reading

    def _catalog_changes(self, branch: BranchRecord, mark: Mark) -> list[float]:
        """Moments the branch's roles or databases changed after its data began; stamps
        are whole seconds, so each counts as the second after it too."""
        stamps = {r.updated_at for r in branch.roles.values()}
        stamps |= {d.updated_at for d in branch.databases.values()}
        moments = [parse_time(s).timestamp() for s in stamps if s]
        return [m + 1.0 for m in moments if m > math.floor(mark.started)]

    def quiet(self, branch: BranchRecord, since: float, until: float) -> bool:
        """Nothing changed `branch`'s data between `since` and `until`."""
        mark = self.mark(branch.id)
        if since < mark.started or branch.deleting:
            return False
        if any(start <= until and end >= since for start, end in mark.busy):
            return False
        return not any(since < moment for moment in self._catalog_changes(branch, mark))

    def _copies(self, branch: BranchRecord) -> list[tuple[BranchRecord, Mark]]:
        """Branches whose data began as a copy of `branch` and has not changed since."""
        found = []
        now = self.clock()
        for other in self.neon.live_branches():
            mark = self.marks.get(other.id)
            if (
                mark is not None
                and other.id != branch.id
                and mark.copy_of == branch.id
                and mark.copied != math.inf
                and self.quiet(other, mark.started, now)
            ):
                found.append((other, mark))
        return sorted(found, key=lambda item: item[1].copy_at)

    def locate(
        self, branch: BranchRecord, point: PointInTime, current_lsn: int | None = None,
        *, seen_at: float | None = None,
    ) -> Located:
        """Where `branch`'s state at `point` is. `seen_at`: judge "unchanged since" up to
        that moment instead of now (a time-travel connection's arrival: its own
        connection, counted as a client of the branch, is not a change before it)."""
        if point.lsn is not None:
            return self._at_lsn(branch, point.lsn, current_lsn, seen_at)
        assert point.timestamp is not None
        return self._at_time(branch, parse_time(point.timestamp).timestamp(), seen_at)

    def _at_time(self, branch: BranchRecord, moment: float, seen_at: float | None = None) -> Located:
        now = self.clock() if seen_at is None else seen_at
        stamp = iso(datetime.fromtimestamp(moment, UTC))
        if moment > now + CLOCK_SLACK:
            raise _error(f"timestamp {stamp} is in the future")
        if moment < now - HISTORY_RETENTION_SECONDS:
            raise _error(
                f"timestamp {stamp} is outside the project's history retention window "
                f"({HISTORY_RETENTION_SECONDS} seconds)"
            )
        if self.quiet(branch, moment, now):
            return Located(branch, stamp, None, moment)
        for copy, mark in self._copies(branch):
            if self._copy_holds(branch, mark, moment):
                return Located(copy, stamp, None, moment)
        if self._replayable(branch, moment, None):
            return Located(branch, stamp, None, moment, replay=True)
        earlier = self._before_branch_point(branch, moment, now)
        if earlier is not None:
            return earlier
        raise _error(f"branch {branch.id} has no kept state at {stamp}: {self.describe(branch)}")

    def _copy_holds(self, branch: BranchRecord, mark: Mark, moment: float) -> bool:
        """Whether the copy `mark` of `branch` holds its state at `moment`: copied as of
        then or later, and `branch` unchanged from then until what the copy holds (the
        moment a replay stopped at, else the end of the copy)."""
        if mark.copy_at < moment:
            return False
        if mark.exact:
            return moment == mark.copy_at or self.quiet(branch, moment, mark.copy_at)
        return self.quiet(branch, moment, mark.copied)

    def _before_branch_point(self, branch: BranchRecord, moment: float, now: float) -> Located | None:
        """On a data plane that replays: a moment at or before the branch point is the
        parent's state then, as a Neon branch's history is its parent's up to there."""
        if getattr(self.neon.dataplane, "replayable", None) is None:
            return None
        mark = self.mark(branch.id)
        parent = self.neon.state.branches.get(mark.copy_of or "")
        if parent is None or parent.deleting or moment > mark.copy_at:
            return None
        try:
            return self._at_time(parent, moment, now)
        except ApiError:
            return None

    def _replayable(self, branch: BranchRecord, moment: float | None, lsn: int | None) -> bool:
        """Whether the data plane can replay `branch` to the point (its WAL since a base)."""
        replayable = getattr(self.neon.dataplane, "replayable", None)
        return bool(replayable is not None and not branch.deleting and replayable(branch, moment, lsn))

    def _at_lsn(
        self, branch: BranchRecord, lsn: str, current_lsn: int | None, seen_at: float | None = None
    ) -> Located:
        wanted = lsn_value(lsn)
        if current_lsn is not None and wanted > current_lsn:
            raise _error(f"LSN {lsn} is in the future: PostgreSQL's WAL is not there yet")
        mark = self.mark(branch.id)
        settled = mark.settled_lsn is not None and wanted >= lsn_value(mark.settled_lsn)
        if settled and self.quiet(branch, mark.settled_at, self.clock() if seen_at is None else seen_at):
            return Located(branch, None, lsn, mark.settled_at)
        for copy, copy_mark in self._copies(branch):
            if copy_mark.copy_lsn is not None and lsn_value(copy_mark.copy_lsn) == wanted:
                return Located(copy, None, lsn, copy_mark.copy_at)
        if self._replayable(branch, None, wanted):
            return Located(branch, None, lsn, self.clock(), replay=True)
        raise _error(f"branch {branch.id} has no kept state at LSN {lsn}: {self.describe(branch)}")

    def describe(self, branch: BranchRecord) -> str:
        """What the server can still produce of `branch`, for a refusal."""
        mark = self.mark(branch.id)
        now = self.clock()
        last = max([mark.started, *(end for _, end in mark.busy)])
        last = max([last, *self._catalog_changes(branch, mark)])
        if last == math.inf:
            head = "a client is connected to it, so only its current state"
        else:
            head = f"its current state, which it has had since {iso(datetime.fromtimestamp(last, UTC))}"
            if mark.settled_lsn is not None:
                head += f" (LSN {mark.settled_lsn} and later)"
        kept = [
            iso(datetime.fromtimestamp(m.copy_at, UTC)) + (f" (LSN {m.copy_lsn})" if m.copy_lsn else "")
            for _, m in self._copies(branch)
            if m.copy_at <= now
        ]
        also = f"; and copies of it as of {', '.join(kept)}" if kept else ""
        since = getattr(self.neon.dataplane, "replayable_since", None)
        wal = since(branch) if since is not None else None
        if wal is not None:
            return f"the local server keeps its WAL since {wal}, and {head}{also}"
        return (
            f"the local server keeps no WAL history, only {head}{also}; "
            "restore or branch from one of those moments"
        )

    async def stop(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
