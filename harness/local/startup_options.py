"""Neon's route for clients without SNI: `options=endpoint%3D<endpoint-id>`.

Neon's proxy routes a connection by the endpoint id in the TLS server name; a client
that sends none (an old libpq, a driver connecting to an address) may name the endpoint
in the startup packet's `options` instead: a bare `endpoint=<id>` word (or the older
`project=<id>`) among the command-line options. Here every listener already belongs to
one endpoint, so the word is checked against it, and removed before the startup goes
upstream: PostgreSQL reads `options` as its own command line and refuses a word it does
not know. `<id>-pooler` is accepted as well (what a pooled host's first label says);
the listener a client reached, not the suffix, decides direct or pooled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEYS = ("endpoint=", "project=")
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
    rest = [w for w in split_options(params["options"]) if not w.startswith(_KEYS)]
    kept = {k: v for k, v in params.items() if k != "options"}
    if rest:
        kept["options"] = _join(rest)
    return kept
