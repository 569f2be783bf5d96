"""A data plane's bases (`pitr`): one per instance, taken right after it is made, and the
replays the control plane asked for by physical database.

A base is taken in the background; the instance's first connection waits for it, so
no client writes before it (a moment between the instance's making and the end of its
base is then only the plane's own role and database sync). An instance made before
this server started gets its base at its first connection; a failure is logged and
not tried again at each connection (the branch only has less history).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.instance import Instance, remove
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.local.compute.moments.pitr import PREFIX, Base, Moment, moment_of, replay, take_base
from cathouse_harness.support.log import get_logger

log = get_logger("local.compute.moments.bases")


class Bases:
    def __init__(self, compute: ComputeHome, instance: Callable[[str], Instance],
                 spawn: Callable[[Awaitable[None]], None]) -> None:
        self._compute = compute
        self._instance = instance
        self._spawn = spawn  # runs a job in the background, awaited when the plane stops
        self._bases: dict[str, Base] = {}
        self._taking: dict[str, asyncio.Event] = {}
        self._tried: set[str] = set()
        # physical database -> the point its copy replays its template to
        self._asked: dict[str, Moment] = {}

    def take_later(self, name: str) -> None:
        """A base of instance `name` (replacing its old one), in the background."""
        self._tried.add(name)
        self._taking[name] = done = asyncio.Event()
        self._spawn(self._take(name, done))

    async def _take(self, name: str, done: asyncio.Event) -> None:
        instance = self._instance(name)
        copy = f"{PREFIX}{secrets.token_hex(6)}"
        try:
            base = await asyncio.to_thread(take_base, instance, self._compute, copy)
        except Exception as exc:  # the branch only has less history
            log.info("no base for instance %s: %s", name, exc)
            return
        finally:
            if self._taking.get(name) is done:
                del self._taking[name]
            done.set()
        old = self._bases.get(name)
        if (instance.paths.data / "PG_VERSION").exists():
            self._bases[name] = base
        else:  # removed meanwhile
            old = base
        if old is not None:
            await asyncio.to_thread(remove, self._instance(old.name))

    async def ready(self, name: str) -> None:
        """Instance `name`'s base is taken (taken now when it never was)."""
        if name not in self._tried:
            self.take_later(name)
        taking = self._taking.get(name)
        if taking is not None:
            await taking.wait()

    async def drop(self, name: str) -> None:
        """Instance `name` is removed or replaced: its base goes."""
        taking = self._taking.get(name)
        if taking is not None:
            await taking.wait()
        base = self._bases.pop(name, None)
        if base is not None:
            await asyncio.to_thread(remove, self._instance(base.name))

    def replayable(self, name: str, moment: float | None, lsn: int | None) -> bool:
        """Whether instance `name` can be replayed to the point (its base is older)."""
        base = self._bases.get(name)
        if base is None:
            return False
        return base.lsn <= lsn if lsn is not None else moment is not None and base.taken_at <= moment

    def since(self, name: str) -> str | None:
        base = self._bases.get(name)
        return datetime.fromtimestamp(base.taken_at, UTC).isoformat() if base is not None else None

    def ask(self, physicals: list[str], moment: float, lsn: str | None) -> None:
        for physical in physicals:
            self._asked[physical] = moment_of(moment, lsn)

    def asked(self, physical: str) -> Moment | None:
        """The point the copy `physical` is to be replayed to, once."""
        return self._asked.pop(physical, None)

    def replay(self, source: Instance, name: str, moment: Moment, promote: bool) -> Instance:
        base = self._bases.get(source.name)
        if base is None:
            raise LocalServerError(f"instance {source.name} keeps no base to replay")
        return replay(source, self._instance(base.name), self._compute, name, moment, promote=promote)
