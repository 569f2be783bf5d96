"""The embedded default: a local Neon-API-v2-compatible server, a PostgreSQL per branch.

Control plane: `app` (HTTP routes and the front door) with `api_*` (route modules,
request validation, Neon's JSON shapes); `control` (state, lookups, endpoints) with
`operations` (operation records, the project lock), `persist` (state writes),
`branching`, `computes`, `catalog` (roles, databases), `reaper`, `schema`; `state`
(persisted JSON), `faults` (fault injection), `server` (foreground server, shared
daemon, `emulator`), `launch` (finding or starting that daemon). Data plane:
`instance_plane` over `compute` (each branch's own PostgreSQL), `relay` (an endpoint's
byte relay) with `proxy` (the connection's start), `proxy_auth` and `scram` (the
client's SCRAM against the instance's verifier), `listeners`, `pgbouncer`, `tls` (the
home's CA), `hosts` (an endpoint's own loopback addresses), `names` and `router` (names
mode) and `introspect` (pg_dump).

Names are imported lazily so that importing one submodule (say, the data plane) does
not pull in the web server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cathouse_harness.local.discovery import LocalServerInfo, running_server
    from cathouse_harness.local.launch import ensure_local_server, stop_local_server
    from cathouse_harness.local.server import run_emulator, run_server
    from cathouse_harness.local.sim.faults import FaultConfig, parse_faults

_EXPORTS = {
    "FaultConfig": "cathouse_harness.local.sim.faults",
    "parse_faults": "cathouse_harness.local.sim.faults",
    "LocalServerInfo": "cathouse_harness.local.discovery",
    "ensure_local_server": "cathouse_harness.local.launch",
    "run_emulator": "cathouse_harness.local.server",
    "run_server": "cathouse_harness.local.server",
    "running_server": "cathouse_harness.local.discovery",
    "stop_local_server": "cathouse_harness.local.launch",
}

__all__ = [
    "FaultConfig",
    "LocalServerInfo",
    "ensure_local_server",
    "parse_faults",
    "run_emulator",
    "run_server",
    "running_server",
    "stop_local_server",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cathouse_harness.local' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
