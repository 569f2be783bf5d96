"""Async Neon API v2 client: models, retries, operation waiting, call statistics.

The same client talks to real Neon and to the embedded local server (`cathouse_harness.local`).
"""

import sys


def _skip_httpx_cli() -> None:
    """httpx imports its command-line tool when it is imported (click, pygments, rich).
    Without rich that import fails, but only after ~20 ms spent loading click and
    pygments, at every session start. Where it would fail anyway, say so up front: httpx
    then takes its own fallback at once. Nothing changes where rich is installed."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    from importlib.util import find_spec

    if find_spec("rich") is None:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]


_skip_httpx_cli()

from cathouse_harness.errors import NeonAPIError  # noqa: E402
from cathouse_harness.neon.client import (  # noqa: E402
    DEFAULT_API_HOST,
    UNSET,
    NeonClient,
    NeonOperationError,
    TransportOptions,
)
from cathouse_harness.neon.models import (  # noqa: E402
    Branch,
    BranchCreated,
    ConnectionInfo,
    Database,
    Endpoint,
    Operation,
    Project,
    Role,
)
from cathouse_harness.neon.retry import RetryPolicy  # noqa: E402
from cathouse_harness.neon.stats import ApiStats  # noqa: E402

__all__ = [
    "DEFAULT_API_HOST",
    "UNSET",
    "ApiStats",
    "Branch",
    "BranchCreated",
    "ConnectionInfo",
    "Database",
    "Endpoint",
    "NeonAPIError",
    "NeonClient",
    "NeonOperationError",
    "Operation",
    "Project",
    "RetryPolicy",
    "Role",
    "TransportOptions",
]
