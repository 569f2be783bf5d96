"""What each revision of a rehearsal did: its time, its locks and how long it held them,
the rows it wrote.

Two sources, because neither alone gives all of it:

- the migration's own connection, inside each revision's transaction just before it
  commits (Alembic's `on_version_apply`, through `migrate.environment.watching_steps`):
  every relation lock the transaction holds then (a transaction keeps its table locks
  to the end, so these are all it took) and `pg_stat_xact_user_tables`, the rows this
  transaction inserted, updated and deleted so far;
- a second connection (`LockSampler`) that reads `pg_locks` every `interval` seconds
  while the migrations run: when a lock was first seen, hence how long it was held
  until the commit (to within one gap between samples). A lock no sample saw was held
  for less than the longest gap between two samples, and is reported as at most that;
  one the revision's transaction still holds at its end, as at most the time since the
  last sample (it was taken after that one).
  The samples alone show the locks of statements outside the revision's transaction
  (`autocommit_block()`) and of the tables it drops (gone from its own catalog).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cathouse_harness.db.urls import libpq_url
from cathouse_harness.errors import MigrationError
from cathouse_harness.migrate.connection import describe_exception
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import redact_url

log = get_logger("rehearsal")

SAMPLE_INTERVAL = 0.02

# The modes that stop other sessions' writes (and ACCESS EXCLUSIVE their reads too): what
# a deploy's running application would wait on. ROW EXCLUSIVE (plain DML) and SHARE
# UPDATE EXCLUSIVE (VACUUM, CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT) block neither.
BLOCKING_MODES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")

# the migration's own relation locks, without the catalogs its own queries read
_OWN_LOCKS = """
SELECT l.relation::bigint, l.mode, l.relation::regclass::text
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND c.relnamespace <> 'pg_catalog'::regnamespace
  AND c.relnamespace <> 'information_schema'::regnamespace
"""
_OWN_ROWS = """
SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del
FROM pg_stat_xact_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
"""
# every other client's relation locks in this database (on a fork: the migration's; not
# autovacuum's), without the catalogs; a relation created by a transaction not yet
# committed has no pg_class row here, and stays in
_OTHERS_LOCKS = """
SELECT l.relation::bigint, l.mode FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation
WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid IN (SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend')
  AND (c.oid IS NULL OR c.relnamespace NOT IN ('pg_catalog'::regnamespace,
                                               'information_schema'::regnamespace))
"""


@dataclass(frozen=True)
class LockHeld:
    """One relation lock a revision took: on what, in which mode, for how long.
    `exact` False: no sample saw it, and `seconds` is the bound it stayed under."""

    target: str
    mode: str
    seconds: float
    exact: bool
    # created by the same transaction: invisible to every other session until the
    # commit, so nobody could have waited on it
    new: bool = False

    @property
    def blocking(self) -> bool:
        return self.mode in BLOCKING_MODES and not self.new

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "seconds": round(self.seconds, 3),
                "measured": self.exact, "new_relation": self.new}


@dataclass(frozen=True)
class RevisionReport:
    """One revision's rehearsal: `error` set when it failed (its locks and rows then unknown)."""

    service: str
    revision: str
    doc: str | None
    seconds: float
    locks: tuple[LockHeld, ...] = ()
    rows: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    sqlstate: str | None = None

    @property
    def rows_total(self) -> int:
        return sum(self.rows.values())

    def longest(self, *, access_exclusive: bool = False) -> LockHeld | None:
        """The blocking lock held longest (of ACCESS EXCLUSIVE ones only, if asked)."""
        chosen = [lock for lock in self.locks if lock.blocking
                  and (not access_exclusive or lock.mode == "AccessExclusiveLock")]
        # a tie (two locks no sample saw, both at the same bound) goes to the stronger mode:
        # taken in one transaction, the stronger one is what others wait on
        return max(chosen, key=lambda lock: (lock.seconds, BLOCKING_MODES.index(lock.mode)),
                   default=None)

    def as_dict(self) -> dict[str, Any]:
        longest = self.longest()
        return {
            "service": self.service, "revision": self.revision, "doc": self.doc,
            "seconds": round(self.seconds, 3),
            "locks": [lock.as_dict() for lock in self.locks],
            "longest_blocking_lock": longest.as_dict() if longest else None,
            "rows": dict(self.rows), "rows_total": self.rows_total,
            "error": self.error, "sqlstate": self.sqlstate,
        }


@dataclass(frozen=True)
class Samples:
    """What the sampler had seen at one moment. A revision's report reads it from one
    snapshot: a sample landing between two of its reads (the sampler's thread runs on)
    would make a lock taken later in the transaction look taken earlier than one before it."""

    times: tuple[float, ...] = ()
    # the locks still seen at the last sample: when first seen
    open: dict[tuple[int, str], float] = field(default_factory=dict)
    # every span, closed or open: (lock, first seen, last seen)
    spans: tuple[tuple[tuple[int, str], float, float], ...] = ()

    def seen_between(self, start: float, end: float) -> dict[tuple[int, str], tuple[float, float]]:
        """The locks seen within [start, end]: when first and last seen. Two takings of one
        lock that no sample fell between (a table one revision creates and the next
        drops) are one span, which may begin before `start`."""
        return {key: (first, last) for key, first, last in self.spans if first <= end and last >= start}

    def first_seen(self, key: tuple[int, str]) -> float | None:
        return self.open.get(key)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch of [start, end] no sample fell in."""
        inside = [t for t in self.times if start <= t <= end]
        points = [start, *inside, end]
        return max(b - a for a, b in zip(points, points[1:], strict=False))

    def since_last(self, start: float, end: float) -> float:
        """How long before `end` the last sample of [start, end] was taken (all of it if none)."""
        return end - max((t for t in self.times if start <= t <= end), default=start)


class SampleLog:
    """The samples as they come (one `record` per reading of pg_locks); not thread-safe
    by itself, `LockSampler` guards it."""

    def __init__(self) -> None:
        self._first_seen: dict[tuple[int, str], float] = {}
        self._last_seen: dict[tuple[int, str], float] = {}
        self._gone: list[tuple[tuple[int, str], float, float]] = []  # (lock, first, last seen)
        self._times: list[float] = []

    def record(self, now: float, seen: set[tuple[int, str]]) -> None:
        self._times.append(now)
        # a lock that went away is closed: the next time it is seen, it is new
        for key in [k for k in self._first_seen if k not in seen]:
            self._gone.append((key, self._first_seen.pop(key), self._last_seen.pop(key)))
        for key in seen:
            self._first_seen.setdefault(key, now)
            self._last_seen[key] = now

    def snapshot(self) -> Samples:
        return Samples(
            times=tuple(self._times), open=dict(self._first_seen),
            spans=(*self._gone, *((k, f, self._last_seen[k]) for k, f in self._first_seen.items())),
        )


def own_holds(locks: list[tuple[tuple[int, str], str]], samples: Samples | None,
              started: float, ended: float) -> list[LockHeld]:
    """How long the revision's transaction held each of its own `locks` ((oid, mode),
    name), all kept to its commit at `ended`."""
    # A lock first seen earlier (or since before the revision) was taken no later than one
    # first seen after it (or never seen: taken after the last sample), and both last to
    # the commit: the bounds below never make its hold the shorter.
    return [_held(key, name, samples, started, ended) for key, name in locks]


def _held(key: tuple[int, str], name: str, samples: Samples | None,
          started: float, ended: float) -> LockHeld:
    first = samples.first_seen(key) if samples is not None else None
    if first is not None and first >= started:
        return LockHeld(name, key[1], max(0.0, ended - first), exact=True)
    if first is not None:  # seen since an earlier revision: no sample fell between them
        return LockHeld(name, key[1], ended - started, exact=False)
    # kept to the commit, yet no sample saw it: taken after the last one
    bound = samples.since_last(started, ended) if samples is not None else ended - started
    return LockHeld(name, key[1], bound, exact=False)


class LockSampler:
    """A thread reading the other sessions' relation locks on the branch every
    `interval` seconds, over a connection of its own (opened before the migrations, so
    the migrations' connection guard never sees it)."""

    def __init__(self, direct_url: str, interval: float = SAMPLE_INTERVAL,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        import psycopg

        self._clock = clock
        self._interval = interval
        try:
            self._connection = psycopg.connect(libpq_url(direct_url), autocommit=True,
                                               application_name="cathouse-harness-rehearsal")
        except Exception as exc:  # the driver's text may hold the URL: describe it instead
            raise MigrationError(f"cannot connect to {redact_url(direct_url)} to watch the locks",
                                 db_error=describe_exception(exc)) from None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._log = SampleLog()
        self._thread = threading.Thread(target=self._run, name="cathouse-lock-sampler", daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._connection.close()
        except Exception as exc:  # closing a connection the branch has already lost
            log.debug("closing the lock sampler's connection: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            # a lock first seen now was taken since the previous sample: the hold measured
            # from the query's start is off by at most one gap between samples
            now = self._clock()
            try:
                with self._lock:
                    rows = self._connection.execute(_OTHERS_LOCKS).fetchall()
            except Exception as exc:  # the branch going away under Ctrl-C, a lost network
                log.debug("lock sample failed: %s", exc)
                return
            with self._lock:
                self._log.record(now, {(int(oid), mode) for oid, mode in rows})
            self._stop.wait(self._interval)

    def committed(self, oids: set[int]) -> dict[int, str]:
        """The names of those of `oids` that are relations other sessions can see: the
        running transaction's own new tables and indexes are not (nobody can wait on
        those), the ones it drops still are."""
        if not oids:
            return {}
        with self._lock:
            rows = self._connection.execute(
                "SELECT oid::bigint, oid::regclass::text FROM pg_class WHERE oid = ANY(%s::oid[])",
                [sorted(oids)],
            ).fetchall()
        return {int(oid): str(name) for oid, name in rows}

    def samples(self) -> Samples:
        """Everything seen so far, as one consistent snapshot."""
        with self._lock:
            return self._log.snapshot()


class RevisionWatcher:
    """The `StepWatcher` of a rehearsal: a `RevisionReport` per applied revision, and
    the revision that was running when a failure (or Ctrl-C) stopped it."""

    def __init__(self, sampler: LockSampler | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._sampler = sampler
        self._clock = clock
        self.reports: list[RevisionReport] = []
        self.running: tuple[str, str, str | None, float] | None = None
        # per transaction (its start time): what earlier revisions in it already reported
        self._transaction: Any = None
        self._reported_locks: set[tuple[int, str]] = set()
        self._reported_rows: dict[str, int] = {}

    def starting(self, service: str, revisions: tuple[str, ...], doc: str | None) -> None:
        self.running = (service, ",".join(revisions), doc, self._clock())

    def applied(self, service: str, revisions: tuple[str, ...], connection: Any) -> None:
        from sqlalchemy import text

        ended = self._clock()
        started = self.running[3] if self.running else ended
        try:
            # in a savepoint: whatever happens to these reads, the revision's own
            # transaction goes on as if they had never run
            with connection.begin_nested():
                transaction = connection.execute(text("SELECT now()")).scalar()
                locks = connection.execute(text(_OWN_LOCKS)).all()
                rows = {name: int(count) for name, count in connection.execute(text(_OWN_ROWS)).all()}
        except Exception as exc:
            log.debug("could not read the revision's locks and rows: %s", exc)
            transaction, locks, rows = object(), [], {}
        if transaction != self._transaction:  # a transaction of its own (the usual case)
            self._transaction, self._reported_locks, self._reported_rows = transaction, set(), {}
        own = {(int(oid), mode) for oid, mode, _ in locks}
        samples = self._sampler.samples() if self._sampler is not None else None
        # what only the samples saw: locks of statements outside the revision's
        # transaction (autocommit_block), and of tables it drops (gone from its catalog)
        outside = ({key: span for key, span in samples.seen_between(started, ended).items()
                    if key not in own and key not in self._reported_locks}
                   if samples is not None else {})
        oids = {oid for oid, _ in own | set(outside)}
        existing = self._sampler.committed(oids) if self._sampler is not None else {o: "" for o in oids}
        mine = []
        for oid, mode, name in locks:
            key = (int(oid), mode)
            if key in self._reported_locks:
                continue  # an earlier revision of the same transaction took it
            self._reported_locks.add(key)
            mine.append((key, str(name)))
        held = [replace(lock, new=key[0] not in existing)
                for (key, _), lock in zip(mine, own_holds(mine, samples, started, ended), strict=True)]
        for (oid, mode), (first, last) in outside.items():
            name = existing.get(oid, f"relation {oid}")
            # seen since before the revision began: it took the lock again at some point
            # in between, and its hold is at most the part after `started`; a sample
            # taken while the commit was under way counts up to the revision's end only
            seconds = min(last, ended) - max(first, started)
            exact = first >= started and last > first
            if seconds <= 0:
                seconds = samples.longest_gap(started, ended) if samples is not None else 0.0
            held.append(LockHeld(name, mode, seconds, exact=exact, new=oid not in existing))
        written = {
            name: count - self._reported_rows.get(name, 0)
            for name, count in rows.items()
            if count > self._reported_rows.get(name, 0) and not name.endswith(".alembic_version")
        }
        self._reported_rows = rows
        self.reports.append(RevisionReport(
            service=service, revision=",".join(revisions), doc=self.running[2] if self.running else None,
            seconds=ended - started, locks=tuple(sorted(held, key=lambda h: (h.target, h.mode))),
            rows=written,
        ))
        self.running = None

    def failed(self, error: str, sqlstate: str | None) -> RevisionReport | None:
        """The report of the revision that was running when the migrations stopped."""
        if self.running is None:
            return None
        service, revision, doc, started = self.running
        report = RevisionReport(service, revision, doc, self._clock() - started,
                                error=error, sqlstate=sqlstate)
        self.reports.append(report)
        self.running = None
        return report
