"""How long a revision held its own locks, from a sequence of pg_locks samples
(rehearsal.watch): a lock taken earlier in the transaction, and kept to its commit like
every other, is never reported as held shorter than one taken after it."""

from __future__ import annotations

import random

from cathouse_harness.rehearsal.watch import LockHeld, RevisionReport, SampleLog, own_holds

USERS = 16384
AE = (USERS, "AccessExclusiveLock")
SHARE = (USERS, "ShareLock")
LOCKS = [(SHARE, "auth.users"), (AE, "auth.users")]  # pg_locks' order is no order


def _replay(*samples: tuple[float, set[tuple[int, str]]]) -> SampleLog:
    log = SampleLog()
    for now, seen in samples:
        log.record(now, seen)
    return log


def _report(held: list[LockHeld]) -> RevisionReport:
    return RevisionReport("auth-service", "8b4e6d0a5c21", None, 1.0, locks=tuple(held))


def _by_mode(held: list[LockHeld]) -> dict[str, LockHeld]:
    return {lock.mode: lock for lock in held}


def test_a_lock_seen_late_is_not_outlasted_by_one_no_sample_saw() -> None:
    # a loaded machine: no sample from the revision's start (0.0) until 0.9, which sees the
    # ADD COLUMN's lock; the index build's SHARE comes after it, and the commit at 1.0
    log = _replay((-0.02, set()), (0.9, {AE}))
    held = _by_mode(own_holds(LOCKS, log.snapshot(), 0.0, 1.0))
    assert held["AccessExclusiveLock"].seconds >= held["ShareLock"].seconds
    # unseen, yet still held at the end: taken after the last sample
    assert held["ShareLock"].seconds <= 1.0 - 0.9 and not held["ShareLock"].exact
    longest = _report(list(held.values())).longest()
    assert longest is not None and longest.mode == "AccessExclusiveLock"


def test_measured_holds_in_the_order_the_locks_were_seen_stay_as_measured() -> None:
    log = _replay((0.0, set()), (0.3, {AE}), (0.6, {AE, SHARE}))
    held = _by_mode(own_holds(LOCKS, log.snapshot(), 0.0, 1.0))
    assert (held["AccessExclusiveLock"].seconds, held["AccessExclusiveLock"].exact) == (0.7, True)
    assert held["ShareLock"].seconds == 0.4 and held["ShareLock"].exact


def test_a_lock_seen_since_before_the_revision_holds_longest() -> None:
    # an earlier revision's lock that no sample fell between: it counts from the start
    log = _replay((-0.1, {AE}), (0.5, {AE, SHARE}))
    held = _by_mode(own_holds(LOCKS, log.snapshot(), 0.0, 1.0))
    assert held["AccessExclusiveLock"].seconds == 1.0 and not held["AccessExclusiveLock"].exact
    assert held["ShareLock"].seconds == 0.5


def test_a_tie_between_locks_no_sample_saw_goes_to_the_stronger_mode() -> None:
    log = _replay((0.0, set()), (0.6, set()))
    held = own_holds(LOCKS, log.snapshot(), 0.0, 1.0)
    assert {lock.seconds for lock in held} == {1.0 - 0.6}
    longest = _report(held).longest()
    assert longest is not None and longest.mode == "AccessExclusiveLock"


def test_over_any_sampling_the_earlier_lock_holds_at_least_as_long_and_bounds_hold() -> None:
    # a transaction from 0 to 1 takes ACCESS EXCLUSIVE at `a`, SHARE at `b` > a; one sampler
    # thread reads pg_locks one query at a time, each query seeing the locks at some moment
    # after its clock reading (a loaded machine: long and uneven delays)
    rng = random.Random(24)
    for _ in range(2000):
        a = rng.uniform(0.0, 0.9)
        b = rng.uniform(a, 1.0)
        log, now = SampleLog(), rng.uniform(-0.2, 0.0)
        while True:
            view = now + rng.expovariate(1 / rng.choice((0.005, 0.05, 0.3)))
            if view > 1.0:
                break
            log.record(now, {lock for lock, taken in ((AE, a), (SHARE, b)) if view >= taken})
            now = view + rng.uniform(0.0, 0.3)
        held = _by_mode(own_holds(LOCKS, log.snapshot(), 0.0, 1.0))
        exclusive, share = held["AccessExclusiveLock"], held["ShareLock"]
        assert exclusive.seconds >= share.seconds, (a, b, log.snapshot())
        longest = _report(list(held.values())).longest()
        assert longest is not None and longest.mode == "AccessExclusiveLock"
        for lock, truly in ((exclusive, 1.0 - a), (share, 1.0 - b)):
            if not lock.exact:  # a bound: never under the true hold
                assert lock.seconds >= truly
