"""What a setup waits for, told to whoever shows it: a plain callable, so the engine
needs no idea of terminals or pytest.

A `Progress` is called with a short phrase when a phase begins ("building template …",
"copying the database for gw0") and with None when the setup no longer waits. The pytest
plugin draws it as one live line; callers that pass nothing get nothing. The migration
runs in threads of its own several calls deep: it finds the callable in a context
variable (`reporting`), which `migrate_all` sets and `run_with_connection` carries into
its thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from cathouse_harness.support.log import get_logger

Progress = Callable[[str | None], None]

log = get_logger("progress")

_current: ContextVar[Progress | None] = ContextVar("cathouse_progress", default=None)


def tell(progress: Progress | None, text: str | None) -> None:
    """Call `progress`, if any; what it raises (a display's trouble) never fails a setup."""
    if progress is None:
        return
    try:
        progress(text)
    except Exception as exc:
        log.debug("progress display failed: %s", exc)


def say(text: str | None) -> None:
    """Tell the progress of the enclosing `reporting` block, if any."""
    tell(_current.get(), text)


@contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    token = _current.set(progress)
    try:
        yield
    finally:
        _current.reset(token)
