"""What `cathouse-branch gc` removes, and why: a pure policy over the harness's branches."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cathouse_harness.branching import lifecycle as branches
from cathouse_harness.branching.spares import is_unclaimed_spare
from cathouse_harness.branching.templates import STALE_BUILD, TEMPLATE_IDLE, last_used


def candidates(found: Sequence[Any], *, current_fingerprint: str | None, run: str | None,
                  now: datetime | None = None) -> list[tuple[Any, str]]:
    """Which harness branches gc removes, and why. Pure, so it is easy to test.

    A branch with children is never chosen (a template that sessions still fork from,
    a parent a delete would fail on). A template of other migrations than this
    checkout's is outdated when it was built on this machine (the checkout moved on: a
    developer's afternoon of migration edits left one per edit) or, built elsewhere
    (other checkouts: main, other CI refs, use theirs), when no session has used it for
    TEMPLATE_IDLE. A spare (`cathouse_harness.branching.spares`) dies at its expiry;
    an unclaimed one of other migrations, made on this machine, is removed at once
    (before its template, which it would otherwise keep as a parent).
    """
    now = now or datetime.now(UTC)
    host = socket.gethostname()[:60]
    # this machine's unclaimed spares of other migrations go first, so that the template
    # they were forked from is no parent any more in the same pass
    chosen: list[tuple[Any, str]] = [
        (branch, "spare of other migrations, made on this machine")
        for branch in found
        if run is None
        and current_fingerprint is not None
        and is_unclaimed_spare(branch)
        and branch.annotation.get(branches.MARK_HOST) == host
        and branch.annotation.get(branches.MARK_FINGERPRINT) != current_fingerprint
    ]
    spares = {branch.id for branch, _ in chosen}
    parents = {b.parent_id for b in found if b.parent_id and b.id not in spares}
    for branch in found:
        if branch.id in parents or branch.id in spares:
            continue
        marks = branch.annotation
        if run is not None:
            if marks.get(branches.MARK_RUN) == run and marks.get(branches.MARK_KIND) == "session":
                chosen.append((branch, f"belongs to run {run}"))
            continue
        kind = marks.get(branches.MARK_KIND)
        used = last_used(branch) if kind == "template" else None
        if branches.is_expired(branch, now):
            chosen.append((branch, "expired"))
        elif kind == "session" and marks.get(branches.MARK_HOST) == host and not _pid_alive(
            marks.get(branches.MARK_PID)
        ):
            chosen.append((branch, "its test process is gone"))
        elif kind == "template" and branch.name.endswith(".building") and branch.created_at and (
            now - branch.created_at > STALE_BUILD
        ):
            chosen.append((branch, "abandoned template build"))
        elif (
            kind == "template"
            and used is not None
            and now - used > TEMPLATE_IDLE
            and marks.get(branches.MARK_FINGERPRINT) != current_fingerprint
        ):
            chosen.append((branch, f"template unused since {used:%Y-%m-%d %H:%M} UTC"))
        elif (
            kind == "template"
            and current_fingerprint is not None
            and not branch.name.endswith(".building")
            and marks.get(branches.MARK_FINGERPRINT) != current_fingerprint
            and marks.get(branches.MARK_HOST) == host
        ):
            chosen.append((branch, "template of older migrations, built on this machine"))
    return chosen


def _pid_alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return True  # unknown: leave it to expires_at
    from cathouse_harness.support.processes import pid_alive

    return pid_alive(int(pid))
