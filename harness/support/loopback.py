"""Where the embedded default puts an endpoint on loopback: its own addresses in
127.0.0.0/8, derived from its id, on PostgreSQL's port.

The local server binds these (`cathouse_harness.local.data.hosts`) and the engine's check that
handed-out URLs name the branch's own endpoint (`branching.endpoint_check`) recognises
them: one scheme, read by both sides, so neither reaches into the other.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator

DEFAULT_PORT = 5432
_CANDIDATES = 4


def pooled_seed(endpoint_id: str) -> str:
    """What the pooled address is derived from: the name Neon gives the pooled host."""
    return f"{endpoint_id}-pooler"


def loopback_addresses(endpoint_id: str) -> Iterator[str]:
    """Addresses in 127.0.0.0/8 for `endpoint_id`, best first: never 127.0.0.1 (shared by
    every listener of ours), nor a .0 or .255 last byte."""
    seed = endpoint_id.encode()
    for attempt in range(_CANDIDATES):
        digest = hashlib.sha256(seed + bytes([attempt])).digest()
        second, third, last = digest[0], digest[1], 1 + digest[2] % 254
        if (second, third) == (0, 0):
            second = 1
        yield str(ipaddress.IPv4Address(bytes([127, second, third, last])))
