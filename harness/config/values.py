"""Checking one configured value: a boolean, a whole number, a duration, a PostgreSQL
bin directory.

Each failure is one `ConfigError` naming the key and where the value came from.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from cathouse_harness.errors import ConfigError

MAX_TTL = timedelta(days=30)
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: Any, *, key: str = "branch_ttl", source: str = "default") -> timedelta:
    """'15m', '2h', '1d', '90s' or a number of seconds; positive and at most 30 days."""
    if isinstance(value, timedelta):
        ttl = value
    elif isinstance(value, bool):
        raise ConfigError("must be a duration like '15m'", key=key, source=source)
    elif isinstance(value, int | float):
        ttl = timedelta(seconds=value)
    else:
        match = _TTL.match(str(value))
        if not match:
            raise ConfigError(
                f"{value!r} is not a duration",
                key=key,
                source=source,
                hint="use a number with s, m, h or d, e.g. '15m'",
            )
        ttl = timedelta(seconds=int(match[1]) * _TTL_UNITS[match[2]])
    if ttl <= timedelta(0):
        raise ConfigError("must be longer than zero", key=key, source=source)
    if ttl > MAX_TTL:
        raise ConfigError(
            "must be at most 30 days (Neon refuses expires_at further ahead)",
            key=key,
            source=source,
        )
    return ttl


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_SECONDS_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def parse_seconds(value: str, *, key: str, source: str = "command line") -> float:
    """A short duration such as a budget: '500ms', '2s', '1.5s', '1m' or bare seconds."""
    match = _SECONDS.match(value)
    if not match:
        raise ConfigError(f"{value!r} is not a duration", key=key, source=source,
                          hint="use a number with ms, s or m, e.g. '500ms' or '2s'")
    seconds = float(match[1]) * _SECONDS_UNITS[match[2]]
    if seconds <= 0:
        raise ConfigError("must be longer than zero", key=key, source=source)
    return seconds


def parse_bool(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{value!r} is not true or false", key=key, source=source)


def parse_int(value: Any, key: str, source: str, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a whole number", key=key, source=source)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number", key=key, source=source) from None
    if number < minimum:
        raise ConfigError(f"must be at least {minimum}, got {number}", key=key, source=source)
    return number


# postgres_bin: which PostgreSQL the embedded default runs (cathouse_harness.local.pg_choice)
POSTGRES_BIN_ENV = "CATHOUSE_POSTGRES_BIN"
POSTGRES_BIN_KEYWORDS = ("auto", "wheel", "system")


def has_postgres_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("postgres", "initdb"))


def check_postgres_bin(
    value: str | None, *, source: str = POSTGRES_BIN_ENV, base: Path | None = None
) -> str | None:
    """The choice normalised (a keyword, or a bin directory's absolute path), or None for
    `auto`; a bad one is one line (ConfigError) naming where it came from. A relative
    path is taken from `base` (the project's root, for pyproject.toml)."""
    text = (value or "").strip()
    if not text or text.lower() == "auto":
        return None
    if text.lower() in POSTGRES_BIN_KEYWORDS:
        return text.lower()
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_dir() and (path / "bin").is_dir() and not has_postgres_binaries(path):
        path = path / "bin"  # the installation's root given for its bin directory
    if not path.is_absolute() or not path.is_dir() or not has_postgres_binaries(path):
        raise ConfigError(
            f"{text!r} is not a PostgreSQL bin directory (one holding postgres and initdb)",
            key="postgres_bin",
            source=source,
            hint="name one (e.g. /usr/lib/postgresql/15/bin), or 'wheel', 'system' or 'auto'",
        )
    return str(path.resolve())
