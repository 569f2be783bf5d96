"""A latency profile for the local Neon server: Neon's waiting, really waited.

Locally an API call costs a millisecond and a branch is ready in about fifteen; on Neon a
round trip from CI costs tens to hundreds of milliseconds and a branch with its compute
takes a second or more. With a profile the server waits that long itself (asyncio sleeps
in request handling and in the operations' state machine, operations staying `running`
meanwhile), so what a client waits for, and what it overlaps, is measured rather than
estimated.

Set at server start from `CATHOUSE_LOCAL_LATENCY` (or `serve(latency=...)`): a preset
name, `key=value` pairs, or a preset followed by pairs that override it:

    neon                                  the preset below
    rtt=0.05,create_branch=0.8            explicit values, the rest 0
    neon,rtt=0.02                         the preset with a shorter round trip

    rtt=S              every API request: S/2 before it is handled, S/2 before the answer
    <action>=S         every operation of that action stays `running` S seconds before
                       its work; actions are Neon's operation actions (ACTIONS)

The `neon` preset's figures and where each comes from are in docs/performance.md,
"At Neon's latencies"; those without a public source are marked there as assumptions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from cathouse_harness.errors import ConfigError
from cathouse_harness.local.sim.faults import seconds_value, split_spec

ENV_VAR = "CATHOUSE_LOCAL_LATENCY"

# Neon's operation actions as the local server records them.
ACTIONS = (
    "create_branch",  # branch create (the copy)
    "start_compute",  # an endpoint starting: after a create, a restore, a start
    "suspend_compute",  # an endpoint stopping: branch delete, endpoint suspend/delete
    "delete_timeline",  # branch delete
    "create_timeline",  # restore (reset from parent)
    "apply_config",  # role, database and endpoint setting changes
)


@dataclass(frozen=True)
class LatencyProfile:
    """Seconds waited per API round trip and per operation action; all 0 by default."""

    rtt: float = 0.0
    create_branch: float = 0.0
    start_compute: float = 0.0
    suspend_compute: float = 0.0
    delete_timeline: float = 0.0
    create_timeline: float = 0.0
    apply_config: float = 0.0
    name: str = field(default="", compare=False)

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "name")

    def duration(self, action: str) -> float:
        return float(getattr(self, action, 0.0)) if action in ACTIONS else 0.0

    def to_spec(self) -> str:
        return ",".join(
            f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name)
        )

    async def operation(self, actions: list[str]) -> None:
        """Wait as long as these operations take one after another on Neon."""
        total = sum(self.duration(action) for action in actions)
        if total:
            await asyncio.sleep(total)


# Figures and sources: docs/performance.md, "At Neon's latencies".
PRESETS: MappingProxyType[str, LatencyProfile] = MappingProxyType(
    {
        "neon": LatencyProfile(
            rtt=0.1,
            create_branch=1.0,
            start_compute=0.5,
            suspend_compute=0.3,
            delete_timeline=0.5,
            create_timeline=1.0,
            apply_config=0.3,
            name="neon",
        ),
    }
)

NO_LATENCY = LatencyProfile()


def _bad(message: str, source: str) -> ConfigError:
    return ConfigError(message, key=ENV_VAR, source=source, hint="see harness/local/sim/latency.py")


def parse_latency(spec: str | None, *, source: str = "environment") -> LatencyProfile:
    """Parse a latency spec (format in the module docstring); ConfigError on a bad one."""
    text = (spec or "").strip()
    head, _, rest = text.partition(",")
    base = NO_LATENCY
    if head.strip() and "=" not in head:
        preset = PRESETS.get(head.strip().lower())
        if preset is None:
            names = ", ".join(sorted(PRESETS))
            raise _bad(f"unknown preset {head.strip()!r} (presets: {names})", source)
        base, text = preset, rest
    values: dict[str, Any] = {}
    for key, raw in split_spec(text, lambda message: _bad(message, source)).items():
        if key != "rtt" and key not in ACTIONS:
            raise _bad(f"unknown key {key!r} (rtt or one of: {', '.join(ACTIONS)})", source)
        values[key] = seconds_value(key, raw, lambda message: _bad(message, source))
    if not values:
        return base
    merged = {f.name: getattr(base, f.name) for f in fields(base) if f.name != "name"}
    merged.update(values)
    name = f"{base.name}+" if base.name else ""
    return LatencyProfile(**merged, name=name)
