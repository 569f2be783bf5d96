"""Async Neon API v2 client: models, retries, operation waiting, call statistics, and the
choice of backend (`backend`: real Neon, or the embedded local server in
`cathouse_harness.local`). The same client talks to both.

Names are imported from their modules (`cathouse_harness.neon.client`, `.models`, ...):
importing the package costs nothing, so `backend` stays cheap for an xdist worker that
needs no client of its own.
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
