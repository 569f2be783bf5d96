"""The `.env` files `cathouse-branch` writes and reads: owner-only (they hold passwords),
marked as ours so a developer's own `.env` is never overwritten, and kept out of git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cathouse_harness.errors import ConfigError
from cathouse_harness.support.safe_paths import write_private

ENV_MARK = "# written by cathouse-branch"


def ssl_root_env(url: str) -> dict[str, str]:
    """`PGSSLROOTCERT` for a URL that names a root certificate: the asyncpg form of the
    URL (DATABASE_URL) cannot carry it, and asyncpg, like libpq, reads it from the
    environment once the `.env` is loaded."""
    from cathouse_harness.db.urls import query_value

    ca_file = query_value(url, "sslrootcert")
    return {"PGSSLROOTCERT": ca_file} if ca_file else {}


def read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    if not path.exists():
        return {}
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read ({type(exc).__name__})", key=str(path)) from None
    return {k: v for k, v in values.items() if v is not None}


def written_by_us(path: Path) -> bool:
    try:
        return path.read_text(encoding="utf-8").startswith(ENV_MARK)
    except (OSError, UnicodeDecodeError):
        return False


def write_env_file(path: Path, values: dict[str, str], *, force: bool) -> None:
    if path.exists() and not written_by_us(path) and not force:
        raise ConfigError(
            "exists and was not written by cathouse-branch",
            key=str(path),
            hint="use --force to overwrite it, or --env-file to write elsewhere",
        )
    lines = [
        ENV_MARK + " — holds passwords; keep it out of git",
        *(f"{k}={_quoted(k, v, path)}" for k, v in values.items()),
    ]
    # a temporary file made new (never a planted link), owner-only, renamed over the old
    write_private(path, "\n".join(lines) + "\n")
    ensure_gitignored(path)


def _quoted(name: str, value: str, path: Path) -> str:
    """`value` in single quotes: a shell that `source`s the file and python-dotenv then
    read the same bytes (unquoted, a URL's `&` ends the shell's assignment). Where the
    two read a quoted value differently (a backslash, a `${...}`, which dotenv expands
    even there) or cannot read it at all (a single quote, a line break), the value is
    refused rather than written for one of them only."""
    if any(c in value for c in "'\\\n\r") or "${" in value:
        raise ConfigError(
            "holds a quote, backslash, ${ or line break, which a .env cannot carry the same "
            "way for the shell and python-dotenv",
            key=f"{path} {name}",
            hint="map a placeholder without it in [tool.cathouse_harness.env]",
        )
    return f"'{value}'"


def ensure_gitignored(path: Path) -> None:
    try:
        inside = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"], cwd=path.parent, capture_output=True,
            text=True, timeout=5,
        )
        if inside.returncode != 0:
            return
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", path.name], cwd=path.parent, capture_output=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return
    if ignored.returncode == 0:
        return
    gitignore = path.parent / ".gitignore"
    with gitignore.open("a", encoding="utf-8") as handle:
        handle.write(f"\n{path.name}\n")
