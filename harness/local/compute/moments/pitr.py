"""A branch's instance at a point in time: a base copy and the WAL the instance kept, replayed.

Neon keeps a branch's WAL for the project's history window and can produce any moment
in it. An instance here keeps its WAL in its own pg_wal (`wal_keep_size` of the small
instance's settings; no archive, nothing outside the instance's directory), and a base:
a copy of itself made right after it was made (`take_base`, through the backup
functions when it runs, as a live fork is made). A moment at or after the base's end
is then the base copied, the instance's WAL copied over the base's, and PostgreSQL's
own recovery up to the moment (`recovery_target_time` / `recovery_target_lsn`):

- for a branch (a create at `parent_timestamp`/`parent_lsn`, a restore): promoted at
  the moment, on a timeline of its own, as any fork afterwards;
- for a time-travel connection: paused at the moment as a hot standby, read-only.

Before the WAL is copied, the source writes a restore point and commits a transaction
with synchronous commit: recovery must find a record after the moment (otherwise it
ends with "recovery ended before configured recovery target was reached"), and the
commit makes sure every record up to it is in the files copied.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.copying import overwrite_tree
from cathouse_harness.local.compute.fork import fork
from cathouse_harness.local.compute.instance import Instance, admin_session, remove, running_pid, start
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.support.polling import Backoff, wait_until
from cathouse_harness.support.safe_paths import write_private

# ControlFileData begins with the system identifier (8 bytes), two versions (4 + 4),
# the state (4, then 4 of padding), the time (8), and then the last checkpoint's LSN
_CHECKPOINT_AT = struct.Struct("=Q")
_CHECKPOINT_OFFSET = 32
PREFIX = "bs-"
_PAUSED_WAIT = 60.0
_PAUSED_POLL = Backoff(0.005, most=0.05)


@dataclass(frozen=True)
class Base:
    """A stopped copy of instance `of`, consistent as of `taken_at` (wall clock) and
    WAL position `lsn` (both at or after the backup's end)."""

    name: str
    of: str
    taken_at: float
    lsn: int


@dataclass(frozen=True)
class Moment:
    """What a replay stops at: a wall-clock time (an RFC 3339 text for PostgreSQL) or an LSN."""

    timestamp: str | None = None
    lsn: str | None = None

    def settings(self) -> dict[str, str]:
        if self.lsn is not None:
            # an LSN names the state of every record before it: `pg_current_wal_insert_lsn()`
            # (where the next record goes) and a replay's end (`copied_lsn`) are named so;
            # inclusive, the replay would also apply the record starting there
            return {"recovery_target_lsn": self.lsn, "recovery_target_inclusive": "off"}
        assert self.timestamp is not None
        return {"recovery_target_time": self.timestamp}


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_of(instance: Instance) -> str | None:
    """`instance`'s WAL position: where the next record goes while it runs; the last
    checkpoint (its shutdown checkpoint, after a clean stop) from pg_control when it is
    stopped. None when neither can be read."""
    if running_pid(instance) is not None:
        try:
            with admin_session(instance) as session:
                return str(session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        except Exception:  # stopped meanwhile: pg_control has it
            pass
    return _checkpoint_lsn(instance)


def _checkpoint_lsn(instance: Instance) -> str | None:
    """The last checkpoint's LSN, from pg_control (None when unreadable)."""
    try:
        head = (instance.paths.data / "global" / "pg_control").read_bytes()[:40]
    except OSError:
        return None
    if len(head) < _CHECKPOINT_OFFSET + _CHECKPOINT_AT.size:
        return None
    return lsn_text(_CHECKPOINT_AT.unpack_from(head, _CHECKPOINT_OFFSET)[0])


def copied_lsn(child: Instance) -> str | None:
    """The position in its source's WAL that a fork or replay `child`, just made, holds
    the source as of (a branch's `parent_lsn`): the end of the last record its startup
    replayed (a live fork, a replay), which PostgreSQL keeps after recovery; a stopped
    copy replayed nothing, and its pg_control still names the source's shutdown
    checkpoint. Read before anything else checkpoints the child."""
    if running_pid(child) is not None:
        with admin_session(child) as session:
            row = session.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        if row is not None and row[0] is not None:
            return str(row[0])
    return _checkpoint_lsn(child)


def moment_of(moment: float, lsn: str | None) -> Moment:
    """The replay's target: the LSN when one was asked for, else the time (microseconds)."""
    if lsn is not None:
        return Moment(lsn=lsn)
    return Moment(timestamp=datetime.fromtimestamp(moment, UTC).isoformat())


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def take_base(instance: Instance, compute: ComputeHome, name: str) -> Base:
    """A base of `instance` (a copy, live when it runs, never started)."""
    fork(instance, compute, name, run=False)
    lsn = lsn_of(instance)
    if lsn is None:
        raise LocalServerError(f"no WAL position for instance {instance.name}")
    return Base(name, instance.name, time.time(), lsn_value(lsn))


def _mark_end(source: Instance) -> None:
    # A commit waits for its WAL only when it has an xid and wrote a record itself
    # (synchronous_commit on): the restore point is that record, and the flush up to
    # this commit writes every earlier record to the files a replay copies.
    with admin_session(source) as session:
        session.execute("SET synchronous_commit = on")
        with session.transaction():
            session.execute("SELECT pg_current_xact_id()")
            session.execute("SELECT pg_create_restore_point('cathouse-harness')")


def replay(source: Instance, base: Instance, compute: ComputeHome, name: str, moment: Moment, *,
           promote: bool) -> Instance:
    """Instance `name`: `source` (running) as of `moment`, from `base` and its WAL (see
    the module); promoted, or paused there as a hot standby."""
    if running_pid(source) is None:
        raise LocalServerError(f"instance {source.name} must run for a replay", hint="start it first")
    _mark_end(source)
    child = fork(base, compute, name, run=False)
    try:
        overwrite_tree(source.paths.data / "pg_wal", child.paths.data / "pg_wal", owner=child.owner)
        write_private(child.paths.data / "recovery.signal", "", owner=child.owner)
        settings = {
            **moment.settings(),
            # the WAL is all in pg_wal: nothing to fetch (required with recovery.signal)
            "restore_command": "/bin/false",
            "recovery_target_action": "promote" if promote else "pause",
            # promoted: no session before the end of recovery, so "ready" means promoted
            "hot_standby": "off" if promote else "on",
        }
        try:
            start(child, settings)
        except LocalServerError:
            raise LocalServerError(
                f"the WAL instance {source.name} keeps does not reach back to that moment",
                hint=f"see {child.paths.log_file}") from None
        if not promote and not wait_until(lambda: _paused(child), timeout=_PAUSED_WAIT, backoff=_PAUSED_POLL):
            raise LocalServerError(f"instance {name} did not reach its moment in time",
                                   hint=f"see {child.paths.log_file}")
    except BaseException:
        remove(child)
        raise
    return child


def _paused(instance: Instance) -> bool:
    with admin_session(instance) as session:
        row = session.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
    return bool(row and row[0] == "paused")
