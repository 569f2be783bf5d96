"""`cathouse-branch`: a developer's own migrated branch, and the housekeeping around it.

Progress goes to stderr, results to stdout (`--json` for machines). Exit codes: 0 done,
1 failed, 2 bad usage or configuration. Errors are one line; secrets are never printed
unless `--show-secrets` is given.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from cathouse_harness.cli.args import PROG, UsageFailure, VersionAsked, build_parser
from cathouse_harness.cli.context import Context, branch_from_env, git_branch, with_client
from cathouse_harness.cli.rehearse import cmd_diff, cmd_rehearse
from cathouse_harness.config.envfile import read_env_file, write_env_file, written_by_us
from cathouse_harness.config.settings import INIT_HINT, parse_ttl
from cathouse_harness.db.urls import url_from_argument
from cathouse_harness.errors import ConfigError, HarnessError
from cathouse_harness.support import env
from cathouse_harness.support.redact import redact_url, scrub

DEV_TTL = timedelta(days=7)


def _migration_rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"service": r.service, "before": r.before, "after": r.after, "seconds": round(r.seconds, 3)}
        for r in results
    ]


def _run_migrations(ctx: Context, direct_url: str, report: Callable[[str], None],
                    target: str | None = None, *, seed: bool = False) -> list[Any]:
    """Migrate every service (then, when `seed`, put the seed in); `report` gets each
    service's line as soon as it is done."""
    from cathouse_harness.migrate.all_services import migrate_all

    seed = seed and bool(ctx.settings.seed)
    if not ctx.settings.migrating_services and not seed:
        ctx.progress.say(f"no service has migrations: nothing to migrate ({INIT_HINT})")
        return []
    step = f"migrate {len(ctx.settings.migrating_services)} service(s)" + (" and seed" if seed else "")
    with ctx.progress.step(step):
        return migrate_all(ctx.settings, direct_url, target=target, reporter=report, seed=seed)


def _migrate(ctx: Context, direct_url: str, *, seed: bool = False) -> list[dict[str, Any]]:
    """Migrate as part of up/reset: each service's line on stderr, the rows for --json.
    `seed`: the branch is new (or back at its parent), so it gets the seed too."""
    rows = _run_migrations(ctx, direct_url, lambda line: ctx.progress.say(f"  {line}"), seed=seed)
    return _migration_rows(rows)


# -- commands ------------------------------------------------------------------------------


def cmd_up(ctx: Context) -> int:
    from cathouse_harness.branching import names as branch_names

    ctx.settings  # noqa: B018  (first: a bad configuration or .env is the error to report)
    ttl = parse_ttl(ctx.args.ttl, key="--ttl", source="command line") if ctx.args.ttl else DEV_TTL
    name = branch_names.dev_name_for(
        ctx.args.name or branch_names.dev_branch_name(git_branch=git_branch(ctx.project_dir))
    )
    if ctx.env_file.exists() and not written_by_us(ctx.env_file) and not ctx.args.force:
        write_env_file(ctx.env_file, {}, force=False)  # raises the one-line refusal
    handle, created, migrations = _migrated_dev_branch(ctx, name, ttl)
    database_url, migration_url = _write_dev_env(ctx, handle)
    payload = {
        "branch_id": handle.id,
        "name": handle.name,
        "created": created,
        "parent_id": handle.parent_id,
        "database_url": ctx.url(database_url),
        "migration_database_url": ctx.url(migration_url),
        "env_file": str(ctx.env_file),
        "migrations": migrations,
    }
    ctx.emit(
        payload,
        [
            f"branch {handle.name} ({handle.id}) {'created' if created else 'reused'}",
            f"DATABASE_URL={ctx.url(database_url)}",
            f"MIGRATION_DATABASE_URL={ctx.url(migration_url)}",
        ],
    )
    return 0


def _migrated_dev_branch(ctx: Context, name: str, ttl: timedelta) -> tuple[Any, bool, list[dict[str, Any]]]:
    """The developer's branch `name` (reused or created) migrated to head: its handle,
    whether it was created, and the migration rows. A branch created here whose
    migrations fail is deleted again: without them it is of no use."""
    from cathouse_harness.branching import lifecycle as branches
    from cathouse_harness.branching.dev_branch import dev_branch

    async def work(client: Any, project_id: str) -> tuple[Any, bool]:
        return await dev_branch(client, project_id, ctx.settings, name=name, ttl=ttl)

    with ctx.progress.step(f"branch {name}"):
        handle, created = with_client(ctx, work)
    try:
        return handle, created, _migrate(ctx, str(handle.direct_url), seed=created)
    except HarnessError:
        if created:

            async def remove(client: Any, project_id: str) -> None:
                await branches.delete_owned_branch(client, project_id, handle.id)

            with_client(ctx, remove)
        raise


def _write_dev_env(ctx: Context, handle: Any) -> tuple[str, str]:
    """Write the branch's URLs, and the project's own names mapped in
    [tool.cathouse_harness.env], into the .env file; (DATABASE_URL, MIGRATION_DATABASE_URL)."""
    from cathouse_harness.config.app_env import runtime_variables

    settings = ctx.settings
    values = runtime_variables(
        settings.env, settings.url_driver, str(handle.pooled_url), str(handle.direct_url)
    )
    write_env_file(
        ctx.env_file,
        {**values, "CATHOUSE_BRANCH_ID": handle.id, "CATHOUSE_BRANCH_NAME": handle.name},
        force=ctx.args.force,
    )
    ctx.progress.say(f"✓ wrote {ctx.env_file} (mode 0600)")
    return values["DATABASE_URL"], values["MIGRATION_DATABASE_URL"]


def cmd_down(ctx: Context) -> int:
    from cathouse_harness.branching import lifecycle as branches

    target = branch_from_env(ctx, ctx.args.name)

    async def work(client: Any, project_id: str) -> Any:
        branch = await branches.resolve_given_branch(client, project_id, target)
        branches.ensure_dev(branch, "delete", finished_sessions=True)
        await branches.delete_owned_branch(client, project_id, branch.id)
        return branch

    with ctx.progress.step(f"delete {target}"):
        branch = with_client(ctx, work)
    env_values = read_env_file(ctx.env_file) if written_by_us(ctx.env_file) else {}
    if env_values.get("CATHOUSE_BRANCH_ID") == branch.id:
        ctx.env_file.unlink()
        ctx.progress.say(f"✓ removed {ctx.env_file}")
    ctx.emit({"deleted": branch.id, "name": branch.name}, [f"deleted {branch.name} ({branch.id})"])
    return 0


def _branch_row(branch: Any) -> dict[str, Any]:
    from cathouse_harness.branching import lifecycle as branches

    return {
        "id": branch.id,
        "name": branch.name,
        "kind": branch.annotation.get(branches.MARK_KIND, "?"),
        "run": branch.annotation.get(branches.MARK_RUN, ""),
        "parent_id": branch.parent_id,
        "expires_at": branch.expires_at.isoformat() if branch.expires_at else None,
        "state": branch.current_state,
    }


def cmd_list(ctx: Context) -> int:
    from cathouse_harness.branching import lifecycle as branches

    async def work(client: Any, project_id: str) -> list[Any]:
        return await branches.harness_branches(client, project_id)

    with ctx.progress.step("list harness branches"):
        found = with_client(ctx, work)
    rows = [_branch_row(b) for b in found]
    ctx.emit({"branches": rows}, list_lines(rows))
    return 0


LIST_COLUMNS = (("ID", "id", 28), ("KIND", "kind", 9), ("EXPIRES", "expires_at", 26), ("NAME", "name", 0))


def list_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """`list`'s table: a header naming the columns, then a branch a line."""
    if not rows:
        return ["no harness branches"]

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            f"{cell:<{width}}" if width else cell
            for cell, (_, _, width) in zip(cells, LIST_COLUMNS, strict=True)
        ).rstrip()

    header = line([title for title, _, _ in LIST_COLUMNS])
    return [header] + [line([str(r[key] or "-") for _, key, _ in LIST_COLUMNS]) for r in rows]


def cmd_url(ctx: Context) -> int:
    """The one command that prints a password on purpose: its output feeds psql or a tool."""
    from cathouse_harness.branching import lifecycle as branches
    from cathouse_harness.config.envfile import ssl_root_env
    from cathouse_harness.db.urls import normalize_asyncpg_url

    target = branch_from_env(ctx, ctx.args.name)
    settings = ctx.settings

    async def work(client: Any, project_id: str) -> Any:
        branch = await branches.resolve_given_branch(client, project_id, target)
        return await branches.handle_for(
            client, project_id, branch.id, database=ctx.args.database or settings.database,
            role=settings.role,
        )

    with ctx.progress.step(f"look up {target}"):
        handle = with_client(ctx, work)
    url = str(handle.pooled_url if ctx.args.pooled else handle.direct_url)
    # The asyncpg form cannot carry the CA that verify-full checks against; asyncpg reads
    # it from PGSSLROOTCERT, so say where it is rather than print a URL that only fails.
    ca_env = ssl_root_env(url) if ctx.args.asyncpg else {}
    if ctx.args.asyncpg:
        url = normalize_asyncpg_url(url)
    if ctx.args.json:
        shown = url if ctx.args.show_secrets else redact_url(url)
        payload: dict[str, Any] = {"branch_id": handle.id, "name": handle.name, "url": shown}
        if ca_env:
            payload["env"] = ca_env
        print(json.dumps(payload), file=ctx.out)
    else:
        print(url, file=ctx.out)
        for key, value in ca_env.items():
            ctx.progress.say(f"asyncpg checks this URL's server against {key}: export {key}={value}")
    return 0


def cmd_reset(ctx: Context) -> int:
    from cathouse_harness.branching import lifecycle as branches

    target = branch_from_env(ctx, ctx.args.name)
    settings = ctx.settings

    async def work(client: Any, project_id: str) -> Any:
        branch = await branches.resolve_given_branch(client, project_id, target)
        branches.ensure_dev(branch, "reset")
        await branches.restore_owned_branch(client, project_id, branch.id)
        return await branches.handle_for(
            client, project_id, branch.id, database=settings.database, role=settings.role,
            kind="dev",
        )

    with ctx.progress.step(f"restore {target} to its parent"):
        handle = with_client(ctx, work)
    migrations = _migrate(ctx, str(handle.direct_url), seed=True)  # its parent has none
    ctx.emit(
        {"branch_id": handle.id, "name": handle.name, "migrations": migrations},
        [f"reset {handle.name} ({handle.id})"],
    )
    return 0


def cmd_gc(ctx: Context) -> int:
    from cathouse_harness.branching import lifecycle as branches
    from cathouse_harness.cleanup import gc

    ctx.args.all = ctx.args.all or ctx.args.stop_others
    if ctx.args.all and ctx.settings.backend == "embedded":
        return _gc_machine(ctx)  # its branches live in the home, which goes

    fingerprint = None
    if ctx.settings.migrates_or_seeds:
        from cathouse_harness.migrate.all_services import migration_fingerprint

        fingerprint = migration_fingerprint(ctx.settings)

    failed: list[str] = []

    async def work(client: Any, project_id: str) -> tuple[list[tuple[Any, str]], list[str]]:
        found = await branches.harness_branches(client, project_id)
        chosen = gc.candidates(found, current_fingerprint=fingerprint, run=ctx.args.run)
        done: list[str] = []
        if not ctx.args.dry_run:
            for branch, _why in chosen:
                try:
                    if await branches.delete_owned_branch(client, project_id, branch.id):
                        done.append(branch.id)
                except HarnessError as exc:  # one refusal must not keep the rest
                    failed.append(f"could not remove {branch.name} ({branch.id}): {exc}")
        return chosen, done

    with ctx.progress.step("collect garbage" + (" (dry run)" if ctx.args.dry_run else "")):
        chosen, done = with_client(ctx, work)
    cleaned: list[str] = []
    if not ctx.args.dry_run:
        from cathouse_harness.cleanup.leftovers import clean_leftovers

        # what finished runs and stopped servers left on this machine (files, processes)
        cleaned = clean_leftovers(ctx.settings.home)
    if ctx.args.all:
        from cathouse_harness.cleanup.leftovers import remove_all

        cleaned += remove_all(ctx.settings.home, project_root=ctx.settings.project_root,
                              dry_run=ctx.args.dry_run, stop_others=ctx.args.stop_others)
    verb = "would remove" if ctx.args.dry_run else "removed"
    rows = [{**_branch_row(b), "reason": why} for b, why in chosen]
    human = [f"{verb} {r['name']} ({r['id']}): {r['reason']}" for r in rows]
    human += [f"cleaned {line}" for line in cleaned]
    for line in failed:
        ctx.progress.say(f"✗ {line}")
    ctx.emit(
        {"dry_run": ctx.args.dry_run, "candidates": rows, "deleted": done, "cleaned": cleaned,
         "failed": failed},
        human or ["nothing to remove"],
    )
    return 1 if failed else 0


def _gc_machine(ctx: Context) -> int:
    """`gc --all` on the embedded default: no API to ask, everything is on this machine."""
    from cathouse_harness.cleanup.leftovers import remove_all

    with ctx.progress.step("remove what the harness made on this machine"
                           + (" (dry run)" if ctx.args.dry_run else "")):
        cleaned = remove_all(ctx.settings.home, project_root=ctx.settings.project_root,
                             dry_run=ctx.args.dry_run, stop_others=ctx.args.stop_others)
    ctx.emit({"dry_run": ctx.args.dry_run, "cleaned": cleaned}, cleaned or ["nothing to remove"])
    return 0


def _check_url(url: str, key: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"{redact_url(url)!r} is not a valid URL ({exc})", key=key) from None
    if not parts.scheme.startswith("postgres") or not parts.hostname:
        raise ConfigError(
            f"{redact_url(url)!r} is not a postgresql:// URL with a host", key=key
        )


def cmd_migrate(ctx: Context) -> int:
    url = (url_from_argument(ctx.args.url) if ctx.args.url else None) \
        or env.read("MIGRATION_DATABASE_URL") or read_env_file(ctx.env_file).get(
        "MIGRATION_DATABASE_URL"
    )
    if not url:
        raise ConfigError(
            "no direct URL to migrate",
            key="MIGRATION_DATABASE_URL",
            source=f"environment and {ctx.env_file}",
            hint=f"pass --url or run {PROG} up",
        )
    _check_url(url, "--url" if ctx.args.url else "MIGRATION_DATABASE_URL")
    from cathouse_harness.migrate.all_services import summary_line

    started = time.perf_counter()

    def report(line: str) -> None:  # results on stdout as they come (not mixed into --json)
        if not ctx.args.json:
            print(line, file=ctx.out, flush=True)

    results = _run_migrations(ctx, url, report, ctx.args.target)
    ctx.emit(
        {"migrations": _migration_rows(results), "changed": any(r.changed for r in results)},
        [summary_line(results, time.perf_counter() - started)],
    )
    return 0


def cmd_doctor(ctx: Context) -> int:
    from cathouse_harness.cli.doctor import run_checks

    checks = run_checks(
        ctx.project_dir, env_file=ctx.env_file, backend=ctx.args.backend, storage=ctx.args.storage
    )
    worst = 0
    for check in checks:
        worst = max(worst, check.exit_code)
    ctx.emit(
        {"checks": [c.as_dict() for c in checks], "ok": worst == 0},
        [c.line() for c in checks],
    )
    return worst


def cmd_init(ctx: Context) -> int:
    """The proposal on stdout (TOML, or JSON), where each value came from on stderr."""
    from cathouse_harness.cli.project_init import check_proposal, propose, write_proposal
    from cathouse_harness.cli.project_names import embedded_project_note

    if ctx.args.force and not ctx.args.yes:
        raise UsageFailure("--force only applies with --yes", hint="add --yes to write the table")
    proposal = propose(ctx.project_dir)
    for service in proposal.services:
        ctx.progress.say(f"{service.name} ({service.alembic_ini})")
        for note in service.notes:
            ctx.progress.say(f"  {note}")
    for note in proposal.notes:
        ctx.progress.say(note)
    for line in proposal.env.lines:
        ctx.progress.say(f"env {line.name} = {line.template}: {line.where}")
    if proposal.env.url_driver:
        ctx.progress.say(f"url_driver {proposal.env.url_driver}: {proposal.env.driver_from}")
    for note in proposal.env.notes:
        ctx.progress.say(note)
    if proposal.names is not None and (home_note := embedded_project_note(proposal.names)):
        ctx.progress.say(home_note)
    problem: HarnessError | None = None
    written: tuple[Path, str] | None = None
    try:
        check_proposal(proposal)
        if ctx.args.yes:
            written = write_proposal(proposal, force=ctx.args.force)
    except HarnessError as exc:  # the proposal is still worth printing: it is what to edit
        problem = exc
    if ctx.args.json:
        payload = {**proposal.as_dict(), "toml": proposal.toml(), "written": written and str(written[0])}
        print(json.dumps(payload, indent=2), file=ctx.out)
    else:
        print(proposal.toml(), end="", file=ctx.out)
    if problem is not None:
        raise problem
    if written is not None:
        ctx.progress.say(f"✓ {written[1]} [tool.cathouse_harness] in {written[0]}")
    else:
        ctx.progress.say(f"nothing written: {PROG} init --yes adds it to pyproject.toml")
    return 0


def cmd_emulator(ctx: Context) -> int:
    from cathouse_harness.config.settings import default_home
    from cathouse_harness.local.server import run_emulator

    home = ctx.args.home or Path(env.read("CATHOUSE_HARNESS_HOME") or default_home())
    # A new project gets the names configured here; none configured: Neon's neondb / neondb_owner.
    names = {
        key: getattr(ctx.settings, key)
        for key in ("database", "role")
        if ctx.settings.source_of(key) != "default"
    }
    return run_emulator(ctx.args.port, home, ctx.args.storage or "memory", ctx.out, **names)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "list": cmd_list,
    "url": cmd_url,
    "reset": cmd_reset,
    "gc": cmd_gc,
    "migrate": cmd_migrate,
    "doctor": cmd_doctor,
    "init": cmd_init,
    "emulator": cmd_emulator,
    "rehearse": cmd_rehearse,
    "diff": cmd_diff,
}


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        ctx = Context(args, out, err)
        return COMMANDS[args.command](ctx)
    except VersionAsked as asked:
        print(asked, file=out)
        return 0
    except HarnessError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # a bug: still one line, still no secret
        if env.read("CATHOUSE_DEBUG"):
            raise
        print(f"{PROG}: unexpected error: {scrub(f'{type(exc).__name__}: {exc}')} "
              "(set CATHOUSE_DEBUG=1 for a traceback)", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
