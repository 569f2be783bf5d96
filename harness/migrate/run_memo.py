"""Reading a project's migration setup once per migration run, and no longer.

One run asks for the same service's Alembic configuration several times (its Config,
its environment, its revisions, the check after it). Inside `once_per_run()` each answer
is kept to the end of the block; outside it every call reads the files again. Nothing is
kept across runs: tests and developers edit those files between runs in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_memo: ContextVar[dict[Hashable, Any] | None] = ContextVar("cathouse_run_memo", default=None)


@contextmanager
def once_per_run() -> Iterator[None]:
    """Keep what `remembered` computes until the block ends (a nested block shares it)."""
    if _memo.get() is not None:
        yield
        return
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def remembered(key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()`, or inside `once_per_run` the value it gave for `key` earlier in the run."""
    memo = _memo.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]  # type: ignore[no-any-return]
