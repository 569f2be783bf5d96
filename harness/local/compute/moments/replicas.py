"""The standbys a data plane keeps: one per read-only endpoint, one per instance a
time-travel connection was served from (`standby`).

Each is a hot standby of its source as of its copy. It is used again while the copy
still holds what is asked (the caller's `fresh`), made again otherwise once nobody
uses it, and removed after it has been idle a while: a standby is cheap to copy again
and holds nothing of its own, so it is never suspended, only dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from cathouse_harness.local.compute.instance import Instance, admin_session, remove, running_pid
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.local.compute.moments.standby import standby_of
from cathouse_harness.support.log import get_logger

log = get_logger("local.compute.moments.replicas")

PREFIX = "ro-"


@dataclass
class Replica:
    name: str  # the standby's instance
    source: str  # the instance it copies
    made_at: float  # wall clock when copied
    token: str  # the source's state when copied (`state_token`)
    users: int = 0
    last_used: float = 0.0


def state_token(instance: Instance) -> str:
    """What changes when `instance`'s data may have: its WAL position while it runs, its
    pg_control file (every start and stop rewrites it) while it is stopped."""
    if running_pid(instance) is not None:
        with contextlib.suppress(Exception), admin_session(instance) as session:
            return "lsn:" + str(session.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        return "unknown"
    try:
        stat = (instance.paths.data / "global" / "pg_control").stat()
    except OSError:
        return "unknown"
    return f"control:{stat.st_mtime_ns}:{stat.st_size}"


Fresh = Callable[[Replica], Awaitable[bool]]
# (source, name) -> the standby, made (a replay paused at a moment)
Make = Callable[[Instance, str], object]
Lock = Callable[[str], asyncio.Lock]


class Replicas:
    def __init__(self, compute: ComputeHome, instance: Callable[[str], Instance], lock: Lock) -> None:
        self._compute = compute
        self._instance = instance
        self._lock = lock
        self._by_key: dict[str, Replica] = {}

    def __contains__(self, name: str) -> bool:
        return any(r.name == name for r in self._by_key.values())

    async def get(self, key: str, source: str, *, fresh: Fresh, verifiers: Mapping[str, str] | None = None,
                  make: Make | None = None) -> Replica:
        """The standby under `key` of instance `source`, made now (by `make`, a standby of
        it as it is now otherwise) unless the one kept is `fresh`; counted as used until
        `release`."""
        async with self._lock(f"replica:{key}"):
            kept = self._by_key.get(key)
            alive = kept is not None and running_pid(self._instance(kept.name)) is not None
            if kept is not None and alive and kept.source == source and await fresh(kept):
                replica = kept
            else:
                if kept is not None and kept.users == 0:
                    await self._remove(key)
                replica = await self._make(source, verifiers, make)
                # one still in use stays until its last session ends (`release`)
                self._by_key[key] = replica
            replica.users += 1
            replica.last_used = time.monotonic()
            return replica

    async def _make(self, source: str, verifiers: Mapping[str, str] | None, make: Make | None) -> Replica:
        name = f"{PREFIX}{secrets.token_hex(6)}"
        parent = self._instance(source)
        made_at = time.time()
        async with self._lock(source):
            if make is not None:
                await asyncio.to_thread(make, parent, name)
            else:
                await asyncio.to_thread(standby_of, parent, self._compute, name, verifiers=verifiers)
            token = await asyncio.to_thread(state_token, parent)
        return Replica(name, source, made_at, token)

    def release(self, replica: Replica) -> None:
        replica.users = max(0, replica.users - 1)
        replica.last_used = time.monotonic()
        if replica.users == 0 and self._by_key.get(self._key_of(replica)) is not replica:
            # replaced while in use: nobody reaches it any more
            asyncio.get_running_loop().create_task(self._remove_instance(replica.name))

    def _key_of(self, replica: Replica) -> str:
        return next((k for k, r in self._by_key.items() if r is replica), "")

    async def _remove(self, key: str) -> None:
        replica = self._by_key.pop(key, None)
        if replica is not None:
            await self._remove_instance(replica.name)

    async def _remove_instance(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(remove, self._instance(name))

    async def drop(self, key: str) -> None:
        """The standby under `key` (its endpoint closed)."""
        async with self._lock(f"replica:{key}"):
            await self._remove(key)

    async def drop_source(self, source: str) -> None:
        """Every standby of instance `source` (removed or replaced)."""
        for key in [k for k, r in self._by_key.items() if r.source == source]:
            await self.drop(key)

    async def drop_idle(self, after: float) -> None:
        moment = time.monotonic()
        for key, replica in list(self._by_key.items()):
            if replica.users == 0 and moment - replica.last_used >= after:
                log.info("standby %s of %s idle: removed", replica.name, replica.source)
                await self.drop(key)

    def names(self) -> list[str]:
        return [r.name for r in self._by_key.values()]


def leftovers(compute: ComputeHome, prefixes: tuple[str, ...] = (PREFIX,)) -> list[str]:
    """Instances a previous server left that hold nothing of their own (standbys, and
    bases: the history starts again with the server, `cathouse_harness.local.control.history`)."""
    folder = compute.base / "instances"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefixes)) if folder.is_dir() else []
