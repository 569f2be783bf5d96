"""What every resource group of the Neon client shares: the transport and its clock.

`NeonClient` (client.py) is these groups stacked over one `Transport`: `operations`
(waiting on Neon's asynchronous work), `branches`, `endpoints`, `roles` (roles,
databases, connection URIs) and `create` (the one request that is not idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from cathouse_harness.neon.retry import RetryPolicy
from cathouse_harness.neon.stats import ApiStats
from cathouse_harness.neon.transport import Sleep, Transport


class ClientBase:
    """The state the resource groups read; `NeonClient.__init__` sets it."""

    _transport: Transport
    _clock: Callable[[], float]
    _sleep: Sleep
    stats: ApiStats
    retry: RetryPolicy


def q(segment: str) -> str:
    """One path segment, quoted (ids and names may hold `/`)."""
    return quote(str(segment), safe="")


def items(data: Any, key: str) -> list[Mapping[str, Any]]:
    """The objects listed under `key` in an answer; [] when it has none."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def obj(data: Any, key: str) -> Mapping[str, Any]:
    """The object under `key` in an answer; {} when it has none."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}
