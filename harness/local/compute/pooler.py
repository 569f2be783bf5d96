"""One PgBouncer per running instance: the pooled path of the instance data plane (#24).

Each instance that a pooled client reaches gets its own PgBouncer (`pgbouncer.PgBouncer`),
run as the home's OS user, in the pool mode of `pooler_mode` (Neon's transaction mode
unless CATHOUSE_POOLER_MODE says otherwise), connecting to the instance's socket and
listening on a socket of its own beside it (no TCP port: only the relay reaches it).
One per instance needs no database aliases: a branch's databases have their real names
inside its instance, so PgBouncer's fallback entry serves them all.

Authentication: PgBouncer's auth file holds SCRAM verifiers, never a password. The
relay reads the role's verifier from the instance's `pg_authid` at every login and
hands it here before it logs in to PgBouncer with the client's ClientKey, so a changed
password (API or `ALTER ROLE`) reaches PgBouncer at the next login, and PgBouncer logs
in to the instance with the same key.

A PgBouncer starts at its instance's first pooled login (most branches of a test run
never see one, and ~90 ms per fork would be paid for nothing) and stops before its
instance does (suspend, a fork replacing it, removal). Without PgBouncer (not
installed, CATHOUSE_PGBOUNCER=off, or a start that failed) the pooled path is the
direct one, as on the shared plane.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.instance import Instance
from cathouse_harness.local.compute.layout import SOCKET_PORT, owned_dir, socket_file
from cathouse_harness.local.data.pgbouncer import (
    PgBouncer,
    carries_prepared_statements,
    find_pgbouncer,
    pgbouncer_version,
    pooler_mode,
    stop_stale,
)
from cathouse_harness.support.log import get_logger

log = get_logger("local.compute.pooler")

_DIRECTORY = "pgbouncer"


def pooler_dir(instance: Instance) -> Path:
    """The instance's PgBouncer files (ini, auth file, pid, log); the socket is in run/."""
    return instance.paths.root / _DIRECTORY


class Poolers:
    """The PgBouncers of one home's running instances, by instance name."""

    def __init__(self) -> None:
        self.binary = find_pgbouncer()
        self.mode = pooler_mode()
        self._running: dict[str, PgBouncer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._version: tuple[int, ...] | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    def info(self) -> dict[str, object] | None:
        """What pooled endpoints run behind, for a client's hint (None: no PgBouncer)."""
        if self.binary is None:
            return None
        version = self._known_version()
        return {"mode": self.mode, "version": ".".join(map(str, version)) if version else "unknown",
                "prepared_statements": carries_prepared_statements(version, self.mode)}

    def _known_version(self) -> tuple[int, ...] | None:
        # asked once: every instance's PgBouncer is the same binary
        if self._version is None and self.binary is not None:
            self._version = pgbouncer_version(self.binary)
        return self._version

    def _bouncer_for(self, instance: Instance) -> PgBouncer:
        assert self.binary is not None
        paths = instance.paths
        return PgBouncer(self.binary, pooler_dir(instance), user=instance.user, pg_host=str(paths.socket_dir),
                         pg_port=SOCKET_PORT, mode=self.mode, socket_dir=paths.socket_dir,
                         version=self._known_version())

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def route(self, instance: Instance, role: str, verifier: str) -> Path:
        """The socket a pooled login of `role` (proved against `verifier`) goes to: the
        instance's PgBouncer, started now if needed and told the role's verifier; the
        instance's own socket without PgBouncer."""
        if self.binary is None:
            return socket_file(instance.paths)
        await asyncio.to_thread(self._known_version)  # `pgbouncer --version`, once, off the loop
        async with self._lock(instance.name):
            bouncer = self._running.get(instance.name)
            if bouncer is not None and bouncer.pid is None:  # it exited: a new one
                log.warning("the PgBouncer of instance %s exited; starting another", instance.name)
                del self._running[instance.name]
                await bouncer.stop()
                bouncer = None
            if bouncer is None:
                bouncer = await self._start(instance, role, verifier)
                if bouncer is None:
                    return socket_file(instance.paths)
        await bouncer.set_user(role, verifier)
        return bouncer.socket_file

    async def _start(self, instance: Instance, role: str, verifier: str) -> PgBouncer | None:
        await asyncio.to_thread(owned_dir, pooler_dir(instance), instance.user)
        bouncer = self._bouncer_for(instance)
        bouncer.preset_user(role, verifier)  # in the first auth file: no reload for the first login
        try:
            await bouncer.start()
        except LocalServerError as exc:
            await bouncer.stop()
            log.warning("pooled logins of instance %s bypass PgBouncer: %s", instance.name, exc)
            return None
        self._running[instance.name] = bouncer
        return bouncer

    async def stop(self, instance: Instance) -> None:
        """Stop the instance's PgBouncer (ours, or one a previous server left running)."""
        async with self._lock(instance.name):
            bouncer = self._running.pop(instance.name, None)
            if bouncer is not None:
                await bouncer.stop()
            elif self.binary is not None:
                await asyncio.to_thread(stop_stale, pooler_dir(instance))

    async def stop_all(self) -> None:
        for name in list(self._running):
            bouncer = self._running.pop(name)
            await bouncer.stop()
