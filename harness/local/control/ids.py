"""Identifiers and generated secrets of the local Neon server.

Ids look like Neon's so that clients which pattern-match them (`br-…`, `ep-…`) work
unchanged: a prefix, two words and a random tail. Physical database names are derived
from branch ids so that one never has to be looked up to find the other.
"""

from __future__ import annotations

import secrets
import string
import uuid

_ADJECTIVES = (
    "amber",
    "bold",
    "brisk",
    "calm",
    "clever",
    "cool",
    "crimson",
    "dawn",
    "dry",
    "dusty",
    "eager",
    "fancy",
    "fluffy",
    "frosty",
    "gentle",
    "green",
    "hidden",
    "icy",
    "jolly",
    "late",
    "lively",
    "lucky",
    "misty",
    "muddy",
    "noisy",
    "odd",
    "pale",
    "plain",
    "proud",
    "quiet",
    "rapid",
    "royal",
    "shy",
    "silent",
    "small",
    "snowy",
    "sunny",
    "tiny",
    "wandering",
    "wild",
)
_NOUNS = (
    "bar",
    "bird",
    "bonus",
    "brook",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "darkness",
    "dew",
    "dream",
    "field",
    "fire",
    "flower",
    "fog",
    "forest",
    "frog",
    "glade",
    "grass",
    "haze",
    "hill",
    "lake",
    "leaf",
    "meadow",
    "moon",
    "morning",
    "mountain",
    "night",
    "paper",
    "pine",
    "pond",
    "rain",
    "river",
    "sea",
    "shadow",
    "sky",
    "snow",
    "star",
    "wave",
)
_TAIL = string.ascii_lowercase + string.digits
_PASSWORD = string.ascii_letters + string.digits


def _words() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def _tail(length: int = 8) -> str:
    return "".join(secrets.choice(_TAIL) for _ in range(length))


def project_id() -> str:
    """Neon-style project id: `<adjective>-<noun>-<8 digits>`."""
    return f"{_words()}-{secrets.randbelow(10**8):08d}"


def branch_id() -> str:
    return f"br-{_words()}-{_tail()}"


def endpoint_id() -> str:
    return f"ep-{_words()}-{_tail()}"


def snapshot_id() -> str:
    return f"snap-{_words()}-{_tail()}"


def operation_id() -> str:
    return str(uuid.uuid4())


def request_id() -> str:
    return str(uuid.uuid4())


def physical_name(branch: str) -> str:
    """The PostgreSQL database holding a branch's data: a safe, lower-case identifier.

    `br-frosty-moon-a1b2c3d4` → `br_frosty_moon_a1b2c3d4`. Ids are generated from the
    alphabet above, so the result needs no quoting; anything else is refused.
    """
    if not branch.startswith("br-"):
        raise ValueError("not a branch id")
    name = "br_" + branch[3:].replace("-", "_")
    if not all(c in _TAIL or c == "_" for c in name) or len(name) > 63:
        raise ValueError("branch id does not map to a safe database name")
    return name


def role_password(length: int = 24) -> str:
    # Letters and digits only: safe in URLs, shells and .env files without quoting.
    return "".join(secrets.choice(_PASSWORD) for _ in range(length))


def api_key() -> str:
    return "napi_local_" + secrets.token_urlsafe(32)
