"""A data plane's bases (`pitr`): one per instance, and the replays the control plane
asked for by physical database.

A base is what a replay starts from: a stopped copy of the instance as it was at or
before its first client's first write. Two ways to get one:

- An instance forked from a stopped parent (an idle template, a suspended branch)
  started from a copy of that parent's data directory, so a copy of the same stopped
  parent is a base already (a clean shutdown checkpoint, nothing to repair). Every
  fork of the same stopped state shares one such copy (`share`): xdist workers and
  the sessions of a run forking one template pay for one copy, not one each, and a
  fork after the first finds its base made.
- Any other instance (a root, a fork of a running parent, a replay) gets a copy of
  itself through the backup functions, in the background (`take_later`).

Either way the instance's first connection waits for its base, so no client writes
before it (a moment between the instance's making and its base is then only the
plane's own role and database sync). An instance made before this server started gets
its base at its first connection; a failure is logged and not tried again at each
connection (the branch only has less history).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute import spares
from cathouse_harness.local.compute.fork import fork_stopped
from cathouse_harness.local.compute.instance import Instance, remove, running_pid
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.local.compute.moments.pitr import PREFIX, Base, Moment, moment_of, replay, take_base
from cathouse_harness.support.log import get_logger

log = get_logger("local.compute.moments.bases")


@dataclass
class _Shared:
    """A copy of a stopped parent as one pg_control digest names it, being made or made."""

    name: str
    made: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool = False


def copy_stopped(parent: Instance, compute: ComputeHome, name: str, state: str) -> bool:
    """Instance `name` (never started): a copy of the stopped `parent` while its state is
    still `state`; False (nothing left) when the parent ran meanwhile."""
    try:
        copy = fork_stopped(parent, compute, name, run=False)
    except LocalServerError:  # it runs again
        return False
    # a start during the copy rewrites pg_control; a postmaster.pid copied with it would
    # name a live postmaster and stop every replay from starting
    if running_pid(parent) is None and spares.digest(parent) == state \
            and not (copy.paths.data / "postmaster.pid").exists():
        return True
    remove(copy)
    return False


class Bases:
    def __init__(self, compute: ComputeHome, instance: Callable[[str], Instance],
                 spawn: Callable[[Awaitable[None]], None]) -> None:
        self._compute = compute
        self._instance = instance
        self._spawn = spawn  # runs a job in the background, awaited when the plane stops
        self._bases: dict[str, Base] = {}
        self._taking: dict[str, asyncio.Event] = {}
        self._tried: set[str] = set()
        # (parent instance, digest of its pg_control) -> the base its stopped forks share
        self._shared: dict[tuple[str, str], _Shared] = {}
        # instance -> the shared base it waits for (it keeps that copy alive meanwhile)
        self._adopting: dict[str, str] = {}
        # physical database -> the point its copy replays its template to
        self._asked: dict[str, Moment] = {}

    def take_later(self, name: str) -> None:
        """A base of instance `name` (replacing its old one), in the background."""
        self._tried.add(name)
        self._taking[name] = done = asyncio.Event()
        self._spawn(self._take(name, done))

    def share(self, name: str, parent: Instance, state: str, lsn: int) -> None:
        """Instance `name` was forked just now from `parent`, stopped in `state` (the
        digest of its pg_control) at checkpoint `lsn`: its base is the copy of that
        stopped parent every such fork shares, made now when none is."""
        self._tried.add(name)
        self._taking[name] = done = asyncio.Event()
        taken_at = time.time()
        key = (parent.name, state)
        shared = self._shared.get(key)
        if shared is None:
            for stale in [k for k in self._shared if k[0] == parent.name]:
                self._unshare(stale)  # the parent ran since: nothing forks that state again
            shared = self._shared[key] = _Shared(f"{PREFIX}{secrets.token_hex(6)}")
            self._spawn(self._copy_shared(parent, state, key, shared))
        self._adopting[name] = shared.name
        self._spawn(self._adopt(name, shared, Base(shared.name, name, taken_at, lsn), done))

    async def _copy_shared(self, parent: Instance, state: str, key: tuple[str, str], shared: _Shared) -> None:
        try:
            shared.ok = await asyncio.to_thread(copy_stopped, parent, self._compute, shared.name, state)
        except Exception as exc:
            log.info("no shared base of instance %s: %s", parent.name, exc)
        finally:
            if not shared.ok and self._shared.get(key) is shared:
                del self._shared[key]
            shared.made.set()
        if shared.ok and self._shared.get(key) is not shared:  # unshared while made
            await self._release(shared.name)

    async def _adopt(self, name: str, shared: _Shared, base: Base, done: asyncio.Event) -> None:
        await shared.made.wait()
        if self._adopting.get(name) == shared.name:
            del self._adopting[name]
        if not shared.ok:  # the parent ran during the copy: a copy of the child itself
            await self._take(name, done)
            return
        if self._taking.get(name) is done:
            del self._taking[name]
        done.set()
        await self._keep(name, base)

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
        await self._keep(name, base)

    async def _keep(self, name: str, base: Base) -> None:
        """`base` is instance `name`'s now (unless it was removed meanwhile)."""
        if not (self._instance(name).paths.data / "PG_VERSION").exists():
            await self._release(base.name)
            return
        old = self._bases.get(name)
        self._bases[name] = base
        if old is not None and old.name != base.name:
            await self._release(old.name)

    async def _release(self, copy: str) -> None:
        """Remove the base `copy` once no instance and no stopped state shares it."""
        if any(base.name == copy for base in self._bases.values()):
            return
        if any(shared.name == copy for shared in self._shared.values()) or copy in self._adopting.values():
            return
        await asyncio.to_thread(remove, self._instance(copy))

    def _unshare(self, key: tuple[str, str]) -> None:
        shared = self._shared.pop(key)
        if shared.made.is_set():
            self._spawn(self._release(shared.name))
        # one still being made is released by `_copy_shared` when nobody waits for it

    async def ready(self, name: str) -> None:
        """Instance `name`'s base is taken (taken now when it never was)."""
        if name not in self._tried:
            self.take_later(name)
        taking = self._taking.get(name)
        if taking is not None:
            await taking.wait()

    async def settled(self, name: str) -> None:
        """No base of instance `name` is being copied from it (before it stops)."""
        taking = self._taking.get(name)
        if taking is not None:
            await taking.wait()
        for (parent, _), shared in list(self._shared.items()):
            if parent == name:
                await shared.made.wait()

    async def drop(self, name: str) -> None:
        """Instance `name` is removed or replaced: its base goes (unless shared), and
        so do the bases of its stopped states no instance uses."""
        await self.settled(name)
        for key in [key for key in self._shared if key[0] == name]:
            self._unshare(key)
        base = self._bases.pop(name, None)
        if base is not None:
            await self._release(base.name)

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
