"""`cathouse-branch rehearse` and `cathouse-branch diff`: the command-line side of
`cathouse_harness.rehearsal` (arguments, progress, the fork's removal, output)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from cathouse_harness.cli.args import PROG
from cathouse_harness.cli.context import Context, branch_from_env, with_client
from cathouse_harness.config.settings import INIT_HINT
from cathouse_harness.config.values import parse_seconds, parse_ttl
from cathouse_harness.errors import ConfigError, HarnessError


def _moment(value: str) -> datetime:
    from cathouse_harness.support.timestamps import parse_strict

    try:
        return parse_strict(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{value!r} is not a timestamp with a time zone", key="--at",
                          source="command line", hint="use RFC 3339, e.g. 2026-12-07T18:00:00Z") from None


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """A second Ctrl-C must not cut the fork's removal short (that would leave it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_rehearse(ctx: Context) -> int:
    from cathouse_harness.rehearsal import run

    args = ctx.args
    settings = ctx.settings
    at = _moment(args.at) if args.at else None
    budget = run.Budget(
        max_lock=parse_seconds(args.max_lock, key="--max-lock") if args.max_lock else None,
        max_duration=parse_seconds(args.max_duration, key="--max-duration") if args.max_duration else None,
    )
    ttl = parse_ttl(args.ttl, key="--ttl", source="command line") if args.ttl else run.REHEARSAL_TTL
    if not settings.migrating_services:
        raise ConfigError("no service has migrations: nothing to rehearse", hint=INIT_HINT)

    forks: list[run.Fork] = []

    async def fork_it(client: Any, project_id: str) -> Any:
        parent = await run.find_parent(client, project_id, args.parent)
        forks.append(run.new_fork(parent, at))
        return await run.create_fork(client, project_id, settings, forks[0], ttl)

    handle = None
    try:
        with ctx.progress.step("fork " + (args.parent or "the default branch")
                               + (f" as of {args.at}" if at else "")):
            handle = with_client(ctx, fork_it)
        fork = forks[0]
        with ctx.progress.step(f"migrate {handle.name}"):
            outcome = run.rehearse_migrations(settings, str(handle.direct_url),
                                              progress=_say_each(ctx))
        with ctx.progress.step(f"schema diff against {fork.parent.name}"):
            diff = with_client(ctx, lambda client, project_id: client.compare_schema(
                project_id, handle.id, db_name=settings.database, base_branch_id=fork.parent.id,
                base_timestamp=at))
    except BaseException:
        if args.keep and handle is not None:  # kept whatever stopped it: say where it is
            for line in _kept_lines(handle, ttl):
                ctx.progress.say(line)
        raise
    finally:
        if forks and not (args.keep and handle is not None):
            _remove(ctx, forks[0], handle.id if handle is not None else None)
    report = run.Rehearsal(
        parent=fork.parent, at=at, fork_id=handle.id, fork_name=handle.name, kept=args.keep,
        revisions=outcome.revisions, diff=diff,
        error=str(outcome.error) if outcome.error else None,
        over_budget=budget.exceeded(outcome.revisions),
    )
    payload = report.as_dict()
    if args.keep:
        payload["fork"]["connect"] = f"{PROG} url {handle.id}"
        payload["fork"]["remove"] = f"{PROG} down {handle.id}"
    ctx.emit(payload, report.lines() + (_kept_lines(handle, ttl) if args.keep else []))
    if outcome.error is not None:
        ctx.progress.say(f"{PROG}: error: {outcome.error}")
    for line in report.over_budget:
        ctx.progress.say(f"{PROG}: over budget: {line}")
    return 1 if outcome.error is not None or report.over_budget else 0


def _say_each(ctx: Context) -> Callable[[str | None], None]:
    def say(text: str | None) -> None:
        if text:
            ctx.progress.say(f"  {text}")

    return say


def _remove(ctx: Context, fork: Any, branch_id: str | None) -> None:
    from cathouse_harness.rehearsal import run

    with _uninterrupted():
        try:
            with ctx.progress.step(f"delete {fork.name}"):
                with_client(ctx, lambda client, project_id: run.remove_fork(
                    client, project_id, fork, branch_id))
        except HarnessError as exc:  # said, and the run's own outcome still reported
            ctx.progress.say(f"could not delete {fork.name}: {exc} (it expires by itself; "
                             f"{PROG} gc removes it then)")


def _kept_lines(handle: Any, ttl: Any) -> list[str]:
    hours = ttl.total_seconds() / 3600
    return [
        f"kept {handle.name} ({handle.id}) for {hours:g} h; connect with:",
        f'  psql "$({PROG} url {handle.id})"',
        f"  {PROG} url {handle.id} --pooled    # the pooled URL, for the application",
        f"remove it with: {PROG} down {handle.id}",
    ]


def cmd_diff(ctx: Context) -> int:
    from cathouse_harness.branching import lifecycle as branches

    target = branch_from_env(ctx, ctx.args.name)
    database = ctx.args.database or ctx.settings.database

    async def work(client: Any, project_id: str) -> tuple[Any, Any, str]:
        branch = await branches.resolve_given_branch(client, project_id, target)
        if ctx.args.against:
            base = await branches.resolve_given_branch(client, project_id, ctx.args.against)
        elif branch.parent_id:
            base = await client.get_branch(project_id, branch.parent_id)
        else:
            raise ConfigError(f"{branch.name} ({branch.id}) has no parent to compare with",
                              key="--against", hint="name the branch to compare with")
        diff = await client.compare_schema(project_id, branch.id, db_name=database, base_branch_id=base.id)
        return branch, base, diff

    with ctx.progress.step(f"compare {target}'s schema"):
        branch, base, diff = with_client(ctx, work)
    payload = {
        "branch": {"id": branch.id, "name": branch.name},
        "against": {"id": base.id, "name": base.name},
        "database": database, "diff": diff, "changed": bool(diff),
    }
    if not diff:
        ctx.progress.say(f"no schema difference between {base.name} and {branch.name} ({database})")
    ctx.emit(payload, diff.rstrip("\n").splitlines() if diff else [])
    return 0
