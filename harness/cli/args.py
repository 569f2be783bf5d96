"""cathouse-branch's command line: its arguments, and the progress lines it prints on
stderr (a step, its mark and how long it took)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, TextIO

from cathouse_harness.errors import ConfigError
from cathouse_harness.support.redact import scrub

PROG = "cathouse-branch"
DISTRIBUTION = "cathouse-harness"
EPILOG = (
    f"Run '{PROG} COMMAND --help' for a command's options. Exit codes: 0 done, 1 failed "
    "(the backend, a migration), 2 bad usage or configuration. docs/cli.md: \"The CLI\"."
)
DESCRIPTION = "cathouse-branch: a developer's own migrated branch, and the housekeeping around it."
ENV_FILE_HELP = "the .env file the branch is recorded in (default ./.env)"
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
    """Usage errors as one line (a UsageFailure, exit 2) instead of argparse's usage block."""

    def error(self, message: str) -> Any:  # argparse would print usage and a traceback-free line
        raise UsageFailure(message, hint=f"see {PROG} --help")


def version() -> str:
    """The installed distribution's version, from its metadata (one source: pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class VersionAsked(Exception):  # noqa: N818  (a request, not an error)
    """--version was given: main prints it on its own stdout (argparse's action would
    write to sys.stdout, past a caller's stream)."""


class _ShowVersion(argparse.Action):
    def __call__(self, *_: Any) -> None:
        raise VersionAsked(f"{PROG} {version()}")


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Each subcommand's one-line help is also the description its own --help shows."""

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if "help" in kwargs and "description" not in kwargs:
            kwargs["description"] = kwargs["help"][:1].upper() + kwargs["help"][1:] + "."
        return super().add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--version", action=_ShowVersion, nargs=0, help=f"print '{PROG} <version>' and exit"
    )
    parser.register("action", "parsers", _Subcommands)
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
        title="commands",
    )
    _add_branch_commands(sub, common)
    _add_project_commands(sub, common)
    _add_rehearsal_commands(sub, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes."""
    common = _Parser(add_help=False)
    common.add_argument("--project-dir", type=Path, default=None, help="project to use (default: .)")
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    common.add_argument("--show-secrets", action="store_true", help="print passwords in URLs")
    common.add_argument(
        "--backend", choices=("neon", "embedded"), default=None,
        help="neon (NEON_API_KEY and project_id) or embedded (a local server); default: "
        "the configuration's, else neon with an API key and embedded without",
    )
    common.add_argument(
        "--storage", choices=("memory", "disk"), default=None,
        help="embedded default only: memory (fast, the default) or disk (survives reboots)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return common


def _add_branch_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """up, down, list, url, reset, gc: the commands on developers' and harness branches."""
    up = sub.add_parser("up", parents=[common], help="create a migrated branch and write .env")
    up.add_argument("--name", default=None, help="branch name (default: harness/dev/<user>-<git branch>)")
    up.add_argument("--ttl", default=None, help="time to live, e.g. 8h or 7d (default 7d)")
    up.add_argument("--parent", default=None, help="parent branch (default from config)")
    up.add_argument("--env-file", type=Path, default=None, help="where to write (default ./.env)")
    up.add_argument("--force", action="store_true", help="overwrite a .env not written by us")

    down = sub.add_parser("down", parents=[common], help="delete a branch made by the harness")
    down.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    down.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)

    sub.add_parser(
        "list", parents=[common],
        help="list the branches the harness made (id, kind, expiry, name; --json for all fields)",
    )

    url = sub.add_parser(
        "url", parents=[common],
        help="print a branch's connection URL with its password, for psql \"$(…)\"",
    )
    url.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    url.add_argument("--pooled", action="store_true", help="the pooled URL instead of the direct one")
    url.add_argument("--asyncpg", action="store_true", help="as postgresql+asyncpg:// for SQLAlchemy")
    url.add_argument(
        "--database", default=None,
        help="another database of the branch (an xdist worker's, e.g. cathouse_gw0)",
    )
    url.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)

    reset = sub.add_parser("reset", parents=[common], help="restore a branch to its parent, migrate")
    reset.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    reset.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)

    gc = sub.add_parser("gc", parents=[common], help="remove expired or orphaned harness branches")
    gc.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    gc.add_argument("--run", default=None, help="only the branches of this test run id")
    gc.add_argument(
        "--all", action="store_true",
        help="also remove everything the harness made on this machine: its home (the embedded "
        "default's branches with it), in-memory clusters in /dev/shm, caches in /var/tmp; each is "
        "named. A system user made as root stays (the command to remove it is printed). The "
        "caches other homes' running servers use stay while they run, and are named",
    )
    gc.add_argument(
        "--stop-others", action="store_true",
        help="--all, after stopping the local servers of other homes that use those directories",
    )


def _add_project_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """migrate, doctor, init, emulator: the commands on the project and its setup."""
    migrate = sub.add_parser("migrate", parents=[common], help="migrate the branch named by .env")
    migrate.add_argument("--url", default=None, help="direct URL without a password, or - to read "
                         "it from stdin (default: MIGRATION_DATABASE_URL)")
    migrate.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)
    migrate.add_argument("--target", default=None,
                         help="revision, branch label or heads to upgrade every service to "
                         "(default: each service's target, head unless configured)")

    doctor = sub.add_parser("doctor", parents=[common], help="check configuration and setup")
    doctor.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)

    init = sub.add_parser(
        "init", parents=[common],
        help="propose [tool.cathouse_harness] from the project's alembic.ini files",
    )
    init.add_argument("--yes", action="store_true", help="write it into the project's pyproject.toml")
    init.add_argument(
        "--force", action="store_true", help="with --yes: replace an existing [tool.cathouse_harness]"
    )

    emulator = sub.add_parser("emulator", parents=[common], help="run the local Neon API server")
    emulator.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    emulator.add_argument(
        "--home", type=Path, default=None,
        help="where its state lives (default: CATHOUSE_HARNESS_HOME or the harness's home)",
    )


def _add_rehearsal_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """rehearse, diff: trying the migrations on a copy of a branch that holds data."""
    rehearse = sub.add_parser(
        "rehearse", parents=[common],
        help="fork a branch with data, run the pending migrations there and report each "
        "revision's time, locks and rows, then the schema diff",
    )
    rehearse.add_argument("--parent", default=None,
                          help="the branch to fork, by name or br- id (default: the project's "
                          "default branch); it is only read")
    rehearse.add_argument("--at", default=None,
                          help="fork the parent as it was then (RFC 3339, e.g. "
                          "2026-12-07T18:00:00Z), within the backend's history")
    rehearse.add_argument("--keep", action="store_true",
                          help="keep the fork afterwards and print how to connect to it")
    rehearse.add_argument("--ttl", default=None,
                          help="with --keep: how long the fork lives (default 1h)")
    rehearse.add_argument("--max-lock", default=None,
                          help="exit 1 when a revision holds a lock that blocks writes longer "
                          "(e.g. 500ms, 2s)")
    rehearse.add_argument("--max-duration", default=None,
                          help="exit 1 when a revision takes longer (e.g. 5s)")

    diff = sub.add_parser("diff", parents=[common],
                          help="print a branch's schema diff against its parent (or --against)")
    diff.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    diff.add_argument("--against", default=None,
                      help="the branch to compare with, by name or br- id (default: its parent)")
    diff.add_argument("--database", default=None,
                      help="the database to compare (default: the configured one)")
    diff.add_argument("--env-file", type=Path, default=None, help=ENV_FILE_HELP)
