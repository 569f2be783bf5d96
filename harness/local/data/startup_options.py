"""Neon's route for clients without SNI: `options=endpoint%3D<endpoint-id>`.

Neon's proxy routes a connection by the endpoint id in the TLS server name; a client
that sends none (an old libpq, a driver connecting to an address) may name the endpoint
in the startup packet's `options` instead: a bare `endpoint=<id>` word (or the older
`project=<id>`) among the command-line options. Here every listener already belongs to
one endpoint, so the word is checked against it, and removed before the startup goes
upstream: PostgreSQL reads `options` as its own command line and refuses a word it does
not know. `<id>-pooler` is accepted as well (what a pooled host's first label says);
the listener a client reached, not the suffix, decides direct or pooled.

Neon's time-travel connections (`neonctl connection-string <branch>@<time>`) name a
moment in the same options: `neon_timestamp:<RFC 3339>` or `neon_lsn:<LSN>`; taken out
here too (`take_point_in_time`), for the gate to decide which state is served.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEYS = ("endpoint=", "project=")
_MOMENTS = ("neon_timestamp:", "neon_lsn:")
_POOLER = "-pooler"
# what Neon allows in an endpoint name
_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class EndpointOptionError(ValueError):
    """The startup's endpoint option cannot be honoured; the message is the FATAL line."""


def split_options(options: str) -> list[str]:
    """The words of a startup `options` value as PostgreSQL splits them: on spaces,
    a backslash keeping the next character (a space, a backslash) in the word."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        words.append("".join(word))
    return words


def _join(words: list[str]) -> str:
    return " ".join(w.replace("\\", "\\\\").replace(" ", "\\ ") for w in words)


def endpoint_named(params: Mapping[str, str]) -> str | None:
    """The endpoint name the startup's options give (`<id>` or `<id>-pooler`), or None.
    Raises EndpointOptionError for a malformed name or more than one such word."""
    named = [w.split("=", 1)[1] for w in split_options(params.get("options", "")) if w.startswith(_KEYS)]
    if not named:
        return None
    if len(named) > 1:
        raise EndpointOptionError("the options name more than one endpoint; give endpoint=<id> once")
    [name] = named
    if not _NAME.match(name):
        raise EndpointOptionError(
            f"endpoint name '{name}' in the options may hold only letters, digits and hyphens"
        )
    return name


def take_endpoint_option(params: Mapping[str, str], endpoint_id: str) -> dict[str, str]:
    """`params` without the endpoint option, once it names `endpoint_id` (or its
    `-pooler` name); unchanged when there is none. Raises EndpointOptionError for
    another endpoint, a malformed name, or more than one such word."""
    name = endpoint_named(params)
    if name is None:
        return dict(params)
    if name.removesuffix(_POOLER) != endpoint_id:
        raise EndpointOptionError(
            f"the options name endpoint '{name}', but this address serves endpoint '{endpoint_id}'"
        )
    return _without_words(params, _KEYS)


def _without_words(params: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """`params` with the options' words that start with one of `prefixes` taken out
    (and `options` itself when nothing else is left in it)."""
    rest = [w for w in split_options(params.get("options", "")) if not w.startswith(prefixes)]
    kept = {k: v for k, v in params.items() if k != "options"}
    if rest:
        kept["options"] = _join(rest)
    return kept


@dataclass(frozen=True)
class TimeTravel:
    """The moment a time-travel connection asks for: one of a timestamp or an LSN, as
    the client wrote it (the gate checks it against what the server has)."""

    timestamp: str | None = None
    lsn: str | None = None
    # when the connection arrived (epoch seconds; the proxy sets it): the history judges
    # the branch unchanged up to then, not counting this connection as a change
    arrived: float | None = None


def take_point_in_time(params: Mapping[str, str]) -> tuple[TimeTravel | None, dict[str, str]]:
    """The moment the startup's options name (None when they name none) and `params`
    without that word. Raises EndpointOptionError for an empty value or more than one."""
    words = split_options(params.get("options", ""))
    named = [w for w in words if w.startswith(_MOMENTS)]
    if not named:
        return None, dict(params)
    if len(named) > 1:
        raise EndpointOptionError(
            "the options name more than one moment; give neon_timestamp:<time> or neon_lsn:<lsn> once"
        )
    key, _, value = named[0].partition(":")
    if not value:
        raise EndpointOptionError(f"{key}: in the options names no moment")
    at = TimeTravel(timestamp=value) if key == "neon_timestamp" else TimeTravel(lsn=value)
    return at, _without_words(params, _MOMENTS)
