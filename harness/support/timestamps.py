"""RFC 3339 timestamps as Neon writes and reads them: one reader and one writer for the
client (lenient: it reads what a server sends) and the local server (which writes Neon's
whole-second form and validates request bodies strictly)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime; None when absent or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # fromisoformat takes at most microseconds; some servers send nanoseconds.
    text = _FRACTION.sub(r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_strict(value: str) -> datetime:
    """A timestamp a request body gives: RFC 3339 with an explicit offset; ValueError
    otherwise (a naive time would be read in whatever zone the server runs)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return moment


def format_time(value: datetime, *, whole_seconds: bool = False) -> str:
    """RFC 3339 in UTC with a trailing "Z", as Neon writes it (`whole_seconds`: to the
    second, as its answers carry them). Naive datetimes count as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if value.microsecond and not whole_seconds:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
