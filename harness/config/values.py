"""Checking one configured value: a boolean, a whole number, a duration.

Each failure is one `ConfigError` naming the key and where the value came from.
"""

from __future__ import annotations

import re
from datetime import timedelta
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
