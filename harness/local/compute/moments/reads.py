"""What the instance data plane serves of a branch's past and of its read-only endpoints.

Both are served from hot standbys (`replicas`, `standby`), never from the branch's own
instance with a read-only session setting a client may turn off (#24, finding 7):

- a read-only endpoint: a standby of the branch's instance, made at the endpoint's
  first connection and made again at a later one when the branch has changed since and
  nobody uses the old copy; it shows the branch as of that copy (a Neon replica
  follows its primary within moments; following here would need a WAL sender);
- a time-travel connection (`options=neon_timestamp:…` / `neon_lsn:…`): the control
  plane's history (`cathouse_harness.local.control.history`, the rule `parent_timestamp` follows)
  names the branch whose current state is the moment asked for, and the connection goes
  to a standby of that branch's instance, kept while that branch stays unchanged and
  dropped when idle. A moment outside the history gets the history's refusal.

Each instance has its own WAL, so LSNs are per instance (`lsn_of`): a fork continues its
parent's positions, and a child's `parent_lsn` is its parent's position when copied.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.instance import Instance
from cathouse_harness.local.compute.layout import socket_file
from cathouse_harness.local.compute.moments.pitr import Moment, moment_of
from cathouse_harness.local.compute.moments.pitr import lsn_of as lsn_of
from cathouse_harness.local.compute.moments.replicas import Replica, Replicas, state_token
from cathouse_harness.local.compute.moments.standby import (
    as_standby_with,
    differing,
    login_verifiers,
    read_verifier,
)
from cathouse_harness.local.data.proxy import Refusal
from cathouse_harness.local.data.relay import Route
from cathouse_harness.local.data.startup_options import TimeTravel

# what the sessions show, as on the shared plane; the standby is what refuses writes
_READ_ONLY = {"default_transaction_read_only": "on"}


@dataclass(frozen=True)
class Reads:
    """The data plane's read-only routes (see the module), over its instances."""

    neon: Any  # the control plane: its history and catalog
    replicas: Replicas
    instance: Callable[[str], Instance]
    instance_name: Callable[[Any], str]  # a branch record -> its instance's name
    running: Callable[[str], Awaitable[Instance]]  # started when suspended
    # (source instance, name, moment, promote) -> the source as of the moment (`pitr.replay`)
    replay: Callable[[Instance, str, Moment, bool], Instance]

    def _replayed(self, parent: Instance, name: str, *, moment: Moment,
                  verifiers: Mapping[str, str] | None) -> Instance:
        """A standby of `parent` as of `moment`: paused there, or, when it must take
        other logins first (`standby`), promoted there and restarted as a standby."""
        if not verifiers:
            return self.replay(parent, name, moment, False)
        return as_standby_with(self.replay(parent, name, moment, True), verifiers)

    def _route(self, replica: Replica) -> Route:
        instance = self.instance(replica.name)
        return Route(socket_file(instance.paths), functools.partial(_verifier, instance), _READ_ONLY,
                     release=functools.partial(self.replicas.release, replica))

    async def read_only(self, endpoint_id: str, primary: Instance) -> Route:
        """A read-only endpoint's route: its standby of the (running) `primary`."""

        async def fresh(replica: Replica) -> bool:
            if replica.users > 0:  # a session in progress keeps its copy; a new one may too
                return True
            return await asyncio.to_thread(state_token, primary) == replica.token

        return self._route(await self.replicas.get(f"ep:{endpoint_id}", primary.name, fresh=fresh))

    async def time_travel(self, branch: Any, primary: Instance, at: TimeTravel) -> Route:
        """A time-travel connection's route (see the module); a Refusal with the
        history's line when it has no state at that moment."""
        located = await self.neon.catalog.located_at(branch, at)
        source = located.source
        name = self.instance_name(source)
        holder = await self.running(name)
        verifiers = None
        if name != primary.name:  # another branch's: it must take this branch's logins
            wanted, present = await asyncio.gather(
                asyncio.to_thread(login_verifiers, primary), asyncio.to_thread(login_verifiers, holder))
            verifiers = differing(wanted, present) or None
        if located.replay:  # nothing holds it as it is now: the WAL replayed to the moment
            moment = moment_of(located.moment, located.lsn)
            try:
                replica = await self.replicas.get(
                    f"tt:{name}:{moment.lsn or moment.timestamp}:{primary.name}", name, fresh=_always,
                    make=functools.partial(self._replayed, moment=moment, verifiers=verifiers))
            except LocalServerError as exc:  # one line for the client, as for a refusal
                raise Refusal("08004", exc.message) from None
            return self._route(replica)
        seen = at.arrived if at.arrived is not None else time.time()

        async def fresh(replica: Replica) -> bool:
            return bool(self.neon.history.quiet(source, replica.made_at, seen))

        replica = await self.replicas.get(f"tt:{name}:{primary.name}", name, fresh=fresh, verifiers=verifiers)
        return self._route(replica)


async def _always(_replica: Replica) -> bool:
    return True  # a moment's state never changes


async def _verifier(instance: Instance, role: str, database: str) -> str | None:
    return await asyncio.to_thread(read_verifier, instance, role, database)
