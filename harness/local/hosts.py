"""An endpoint's own loopback address, so a URL built from its `host` alone connects.

Neon's clients take an endpoint's `host`, the default port 5432, and (for the pooled
endpoint) insert `-pooler` after the endpoint id. On Linux the whole of 127.0.0.0/8 is
loopback and binding any of it needs no root, so each endpoint gets an address of its
own there (derived from its id, so the same after a restart) with a listener on 5432:
its `host` is that address, and `postgresql://role:pw@<host>/db?sslmode=require`
reaches the branch directly. A second address (derived from `<id>-pooler`) listens on
5432 for the pooled listener and is answered as `pooler_host`, so a pooled URL built
from `pooler_host` goes through PgBouncer. What does not hold: `-pooler` cannot be
inserted into an address, so a pooled URL built from `host` by Neon's naming rule
reaches the direct listener (connected, not pooled); and where the addresses cannot be
bound (macOS has only 127.0.0.1, or 5432 is taken) `host` and `pooler_host` are
127.0.0.1, `connection_uri` carries the kernel-picked ports, and the server says so once
at start. `connection_uri` works everywhere.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket
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


def free_loopback_address(port: int = DEFAULT_PORT, tries: int = 50) -> str | None:
    """A random address of 127.0.0.0/8 (not 127.0.0.1) where `port` is free now; None
    where none is (only 127.0.0.1 is loopback, as on macOS). For tests and benchmarks
    that put a listener of their own on 5432."""
    for _ in range(tries):
        address = f"127.{secrets.randbelow(200) + 30}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 2}"
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        return address
    return None
