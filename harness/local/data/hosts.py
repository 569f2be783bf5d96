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

import secrets
import socket

# the scheme lives in support/, since the engine's URL check reads it too
from cathouse_harness.support.loopback import DEFAULT_PORT as DEFAULT_PORT
from cathouse_harness.support.loopback import loopback_addresses as loopback_addresses
from cathouse_harness.support.loopback import pooled_seed as pooled_seed


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
