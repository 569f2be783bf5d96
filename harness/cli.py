"""`cathouse-branch`: a developer's own migrated branch, and the housekeeping around it.

Progress goes to stderr, results to stdout (`--json` for machines). Exit codes: 0 done,
1 failed, 2 bad usage or configuration. Errors are one line; secrets are never printed
unless `--show-secrets` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from harness.envfile import read_env_file, write_env_file, written_by_us
from harness.errors import ConfigError, HarnessError
from harness.redact import redact_url, scrub
from harness.settings import INIT_HINT, Settings, load_settings, parse_ttl
from harness.urls import url_from_argument

PROG = "cathouse-branch"
DEV_TTL = timedelta(days=7)
NAME_HELP = (
    "the name given to up (X for harness/dev/X), the full name or the br- id "
    "(default: the one in .env)"
)


class Progress:
    """Steps with timings on stderr; a person sees what is happening and how long it took."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet

    def step(self, label: str) -> _Step:
        return _Step(self, label)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(scrub(text), file=self.stream, flush=True)


class _Step:
    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label

    def __enter__(self) -> _Step:
        self.started = time.perf_counter()
        if self.progress.stream.isatty() and not self.progress.quiet:
            print(f"… {self.label}", end="\r", file=self.progress.stream, flush=True)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        seconds = time.perf_counter() - self.started
        mark = "✗" if exc_type else "✓"
        self.progress.say(f"{mark} {self.label} ({seconds:.2f} s)")


class UsageFailure(ConfigError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and a traceback-free line
        raise UsageFailure(message, hint=f"see {PROG} --help")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--project-dir", type=Path, default=None, help="project to use (default: .)")
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    common.add_argument("--show-secrets", action="store_true", help="print passwords in URLs")
    common.add_argument("--backend", choices=("neon", "embedded"), default=None)
    common.add_argument(
        "--storage", choices=("memory", "disk"), default=None,
        help="embedded default only: memory (fast, the default) or disk (survives reboots)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress on stderr")

    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", parents=[common], help="create a migrated branch and write .env")
    up.add_argument("--name", default=None, help="branch name (default: harness/dev/<user>-<git branch>)")
    up.add_argument("--ttl", default=None, help="time to live, e.g. 8h or 7d (default 7d)")
    up.add_argument("--parent", default=None, help="parent branch (default from config)")
    up.add_argument("--env-file", type=Path, default=None, help="where to write (default ./.env)")
    up.add_argument("--force", action="store_true", help="overwrite a .env not written by us")

    down = sub.add_parser("down", parents=[common], help="delete a branch made by the harness")
    down.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    down.add_argument("--env-file", type=Path, default=None)

    sub.add_parser("list", parents=[common], help="list the branches the harness made")

    url = sub.add_parser(
        "url", parents=[common],
        help="print a branch's connection URL with its password, for psql \"$(…)\"",
    )
    url.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    url.add_argument("--pooled", action="store_true", help="the pooled URL instead of the direct one")
    url.add_argument("--asyncpg", action="store_true", help="as postgresql+asyncpg:// for SQLAlchemy")
    url.add_argument("--env-file", type=Path, default=None)

    reset = sub.add_parser("reset", parents=[common], help="restore a branch to its parent, migrate")
    reset.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    reset.add_argument("--env-file", type=Path, default=None)

    gc = sub.add_parser("gc", parents=[common], help="remove expired or orphaned harness branches")
    gc.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    gc.add_argument("--run", default=None, help="only the branches of this test run id")

    migrate = sub.add_parser("migrate", parents=[common], help="migrate the branch named by .env")
    migrate.add_argument("--url", default=None, help="direct URL without a password, or - to read "
                         "it from stdin (default: MIGRATION_DATABASE_URL)")
    migrate.add_argument("--env-file", type=Path, default=None)

    doctor = sub.add_parser("doctor", parents=[common], help="check configuration and setup")
    doctor.add_argument("--env-file", type=Path, default=None)

    init = sub.add_parser(
        "init", parents=[common],
        help="propose [tool.cathouse_harness] from the project's alembic.ini files",
    )
    init.add_argument("--yes", action="store_true", help="write it into the project's pyproject.toml")
    init.add_argument(
        "--force", action="store_true", help="with --yes: replace an existing [tool.cathouse_harness]"
    )

    emulator = sub.add_parser("emulator", parents=[common], help="run the local Neon API server")
    emulator.add_argument("--port", type=int, default=0)
    emulator.add_argument("--home", type=Path, default=None)
    return parser


# -- shared plumbing ---------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.progress = Progress(err, quiet=getattr(args, "quiet", False) or False)
        self.project_dir: Path = (args.project_dir or Path.cwd()).resolve()
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            options: dict[str, Any] = {"backend": self.args.backend}
            if getattr(self.args, "storage", None) and self.args.command != "emulator":
                options["local_storage"] = self.args.storage
            if getattr(self.args, "parent", None):
                options["parent_branch"] = self.args.parent
            self._settings = load_settings(self.project_dir, options=options)
        return self._settings

    @property
    def env_file(self) -> Path:
        given = getattr(self.args, "env_file", None)
        return (given or self.project_dir / ".env").resolve()

    def url(self, url: str) -> str:
        return url if self.args.show_secrets else redact_url(url)

    def emit(self, payload: dict[str, Any], human: Sequence[str]) -> None:
        if self.args.json:
            print(json.dumps(payload, indent=2, default=str), file=self.out)
        else:
            for line in human:
                print(line, file=self.out)


def _with_client(ctx: Context, work: Callable[[Any, str], Any]) -> Any:
    """Run `work(client, project_id)` on the backend with a fresh client."""
    import asyncio

    from harness.backend import connect_backend, open_client

    with ctx.progress.step("connect to backend"):
        backend = connect_backend(ctx.settings)

    async def _main() -> Any:
        async with open_client(backend) as client:
            return await work(client, backend.project_id)

    from harness.branches import refused_key
    from harness.errors import NeonAPIError

    try:
        return asyncio.run(_main())
    except NeonAPIError as exc:
        refused = refused_key(exc, ctx.settings)
        if refused is not None:
            raise refused from None
        raise


def _git_branch(directory: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=directory, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = result.stdout.strip()
    return name if result.returncode == 0 and name and name != "HEAD" else None


def _branch_from_env(ctx: Context, name: str | None) -> str:
    if name:
        return name
    values = read_env_file(ctx.env_file)
    branch = values.get("CATHOUSE_BRANCH_ID")
    if not branch:
        raise ConfigError(
            "no branch given and none recorded",
            key="CATHOUSE_BRANCH_ID",
            source=str(ctx.env_file),
            hint=f"name the branch, or run {PROG} up first",
        )
    return branch


def _print_migrations(ctx: Context, results: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        rows.append(
            {"service": r.service, "before": r.before, "after": r.after, "seconds": round(r.seconds, 3)}
        )
        if r.before == r.after:
            ctx.progress.say(f"  {r.service}: at head {r.after}, nothing to do")
        else:
            ctx.progress.say(f"  {r.service}: {r.before or 'base'} -> {r.after} ({r.seconds:.2f} s)")
    return rows


def _migrate(ctx: Context, direct_url: str) -> list[dict[str, Any]]:
    from harness.migrations import migrate_all

    if not ctx.settings.migrating_services:
        ctx.progress.say(f"no service has migrations: nothing to migrate ({INIT_HINT})")
        return []
    with ctx.progress.step(f"migrate {len(ctx.settings.migrating_services)} service(s)"):
        results = migrate_all(ctx.settings, direct_url)
    return _print_migrations(ctx, results)


# -- commands ------------------------------------------------------------------------------


def cmd_up(ctx: Context) -> int:
    from harness import branches
    from harness.urls import normalize_asyncpg_url

    settings = ctx.settings
    ttl = parse_ttl(ctx.args.ttl, key="--ttl", source="command line") if ctx.args.ttl else DEV_TTL
    name = branches.dev_name_for(
        ctx.args.name or branches.dev_branch_name(git_branch=_git_branch(ctx.project_dir))
    )
    if ctx.env_file.exists() and not written_by_us(ctx.env_file) and not ctx.args.force:
        write_env_file(ctx.env_file, {}, force=False)  # raises the one-line refusal

    async def work(client: Any, project_id: str) -> tuple[Any, bool]:
        # first: a wrong project, key or parent is a one-line config error, before anything
        parent = await branches.resolve_parent(client, project_id, settings)
        existing = await client.find_branch(project_id, name)
        if existing is not None:
            branches.ensure_dev(existing, "reuse")
            handle = await branches.handle_for(
                client, project_id, existing.id, database=settings.database, role=settings.role,
                kind="dev",
            )
            await branches.extend_expiry(client, project_id, [existing.id], ttl)
            return handle, False
        handle = await branches.create_owned_branch(
            client, project_id, name=name, parent_id=parent.id, ttl=ttl, kind="dev",
            run_id=f"dev-{branches.clean_name_part(name)}", database=settings.database,
            role=settings.role, schema_only=settings.schema_only,
        )
        return handle, True

    with ctx.progress.step(f"branch {name}"):
        handle, created = _with_client(ctx, work)
    try:
        migrations = _migrate(ctx, str(handle.direct_url))
    except HarnessError:
        if created:  # a branch that never got its migrations is of no use: leave nothing

            async def remove(client: Any, project_id: str) -> None:
                await branches.delete_owned_branch(client, project_id, handle.id)

            _with_client(ctx, remove)
        raise
    database_url = normalize_asyncpg_url(str(handle.pooled_url))
    migration_url = str(handle.direct_url)
    write_env_file(
        ctx.env_file,
        {
            "DATABASE_URL": database_url,
            "MIGRATION_DATABASE_URL": migration_url,
            "CATHOUSE_BRANCH_ID": handle.id,
            "CATHOUSE_BRANCH_NAME": handle.name,
        },
        force=ctx.args.force,
    )
    ctx.progress.say(f"✓ wrote {ctx.env_file} (mode 0600)")
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


def cmd_down(ctx: Context) -> int:
    from harness import branches

    target = _branch_from_env(ctx, ctx.args.name)

    async def work(client: Any, project_id: str) -> Any:
        branch = await branches.resolve_given_branch(client, project_id, target)
        branches.ensure_dev(branch, "delete", finished_sessions=True)
        await branches.delete_owned_branch(client, project_id, branch.id)
        return branch

    with ctx.progress.step(f"delete {target}"):
        branch = _with_client(ctx, work)
    env_values = read_env_file(ctx.env_file) if written_by_us(ctx.env_file) else {}
    if env_values.get("CATHOUSE_BRANCH_ID") == branch.id:
        ctx.env_file.unlink()
        ctx.progress.say(f"✓ removed {ctx.env_file}")
    ctx.emit({"deleted": branch.id, "name": branch.name}, [f"deleted {branch.name} ({branch.id})"])
    return 0


def _branch_row(branch: Any) -> dict[str, Any]:
    from harness import branches

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
    from harness import branches

    async def work(client: Any, project_id: str) -> list[Any]:
        return await branches.harness_branches(client, project_id)

    with ctx.progress.step("list harness branches"):
        found = _with_client(ctx, work)
    rows = [_branch_row(b) for b in found]
    human = [f"{r['id']:<28} {r['kind']:<9} {r['expires_at'] or '-':<26} {r['name']}" for r in rows]
    ctx.emit({"branches": rows}, human or ["no harness branches"])
    return 0


def cmd_url(ctx: Context) -> int:
    """The one command that prints a password on purpose: its output feeds psql or a tool."""
    from harness import branches
    from harness.urls import normalize_asyncpg_url

    target = _branch_from_env(ctx, ctx.args.name)
    settings = ctx.settings

    async def work(client: Any, project_id: str) -> Any:
        branch = await branches.resolve_given_branch(client, project_id, target)
        return await branches.handle_for(
            client, project_id, branch.id, database=settings.database, role=settings.role
        )

    with ctx.progress.step(f"look up {target}"):
        handle = _with_client(ctx, work)
    url = str(handle.pooled_url if ctx.args.pooled else handle.direct_url)
    if ctx.args.asyncpg:
        url = normalize_asyncpg_url(url)
    if ctx.args.json:
        shown = url if ctx.args.show_secrets else redact_url(url)
        print(json.dumps({"branch_id": handle.id, "name": handle.name, "url": shown}), file=ctx.out)
    else:
        print(url, file=ctx.out)
    return 0


def cmd_reset(ctx: Context) -> int:
    from harness import branches

    target = _branch_from_env(ctx, ctx.args.name)
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
        handle = _with_client(ctx, work)
    migrations = _migrate(ctx, str(handle.direct_url))
    ctx.emit(
        {"branch_id": handle.id, "name": handle.name, "migrations": migrations},
        [f"reset {handle.name} ({handle.id})"],
    )
    return 0


def gc_candidates(found: Sequence[Any], *, current_fingerprint: str | None, run: str | None,
                  now: datetime | None = None) -> list[tuple[Any, str]]:
    """Which harness branches gc removes, and why. Pure, so it is easy to test.

    A branch with children is never chosen (a template that sessions still fork from,
    a parent a delete would fail on). A template is outdated when no session has used
    it for TEMPLATE_IDLE, not when its fingerprint differs from this checkout's: other
    checkouts (main, other CI refs) use theirs.
    """
    import socket

    from harness import branches
    from harness.templates import STALE_BUILD, TEMPLATE_IDLE, last_used

    now = now or datetime.now(UTC)
    host = socket.gethostname()[:60]
    parents = {b.parent_id for b in found if b.parent_id}
    chosen: list[tuple[Any, str]] = []
    for branch in found:
        if branch.id in parents:
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
    return chosen


def _pid_alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return True  # unknown: leave it to expires_at
    from harness.local.discovery import pid_alive

    return pid_alive(int(pid))


def cmd_gc(ctx: Context) -> int:
    from harness import branches

    fingerprint = None
    if ctx.settings.migrating_services:
        from harness.migrations import migration_fingerprint

        fingerprint = migration_fingerprint(ctx.settings)

    failed: list[str] = []

    async def work(client: Any, project_id: str) -> tuple[list[tuple[Any, str]], list[str]]:
        found = await branches.harness_branches(client, project_id)
        chosen = gc_candidates(found, current_fingerprint=fingerprint, run=ctx.args.run)
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
        chosen, done = _with_client(ctx, work)
    cleaned: list[str] = []
    if not ctx.args.dry_run:
        from harness.leftovers import clean_leftovers

        # what finished runs and stopped servers left on this machine (files, processes)
        cleaned = clean_leftovers(ctx.settings.home)
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
        or os.environ.get("MIGRATION_DATABASE_URL") or read_env_file(ctx.env_file).get(
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
    migrations = _migrate(ctx, url)
    changed = any(m["before"] != m["after"] for m in migrations)
    ctx.emit(
        {"migrations": migrations, "changed": changed},
        ["migrated" if changed else "all services at head; nothing changed"],
    )
    return 0


def cmd_doctor(ctx: Context) -> int:
    from harness.doctor import run_checks

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
    from harness.project_init import check_proposal, propose, write_proposal

    if ctx.args.force and not ctx.args.yes:
        raise UsageFailure("--force only applies with --yes", hint="add --yes to write the table")
    proposal = propose(ctx.project_dir)
    for service in proposal.services:
        ctx.progress.say(f"{service.name} ({service.alembic_ini})")
        for note in service.notes:
            ctx.progress.say(f"  {note}")
    for note in proposal.notes:
        ctx.progress.say(note)
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
    from harness.local.server import run_emulator
    from harness.settings import default_home

    home = ctx.args.home or Path(os.environ.get("CATHOUSE_HARNESS_HOME") or default_home())
    return run_emulator(ctx.args.port, home, ctx.args.storage or "memory", ctx.out)


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
}


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        ctx = Context(args, out, err)
        return COMMANDS[args.command](ctx)
    except HarnessError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # a bug: still one line, still no secret
        if os.environ.get("CATHOUSE_DEBUG"):
            raise
        print(f"{PROG}: unexpected error: {scrub(f'{type(exc).__name__}: {exc}')} "
              "(set CATHOUSE_DEBUG=1 for a traceback)", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
