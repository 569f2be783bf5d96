"""Fault injection for the local Neon server, so client resilience is tested for real.

Faults are set at server start from `CATHOUSE_LOCAL_FAULTS`, changed at run time with
`PUT /api/v2/_local/faults` (Bearer auth; body `{"spec": "<spec>"}` or the fields as a JSON
object), and from Python with `parse_faults`. An empty spec means no faults.

Spec: comma-separated `key=value`, for example
`latency=0.05,rate429=0.3,retry_after=1,rate423=0.1,rate5xx=0.1,drop=0.1,op_delay=2,op_fail=0.2,seed=42`

    latency=S       add S seconds before answering every API request
    rate429=P       share P (0..1) of API requests answered 429 with `Retry-After`
    retry_after=S   the `Retry-After` value, whole seconds (default 1)
    rate423=P       share answered 423 (project/branch locked)
    rate5xx=P       share answered 500 or 503 (chosen at random)
    drop=P          share whose connection is closed with no HTTP answer at all
    drop_after=P    share that is carried out and then dropped before the answer: a create
                    happens but the client never hears of it (the double-create trap)
    op_delay=S      every operation stays `running` for S seconds before it does its work
    op_fail=P       share of mutations (branch create, delete, restore; endpoint, role and
                    database changes) whose operations all end `failed` (see below)
    seed=N          seed of the random generator, for reproducible runs
    limit=N         inject at most N request faults (429/423/5xx/drop/drop_after), then none
    methods=M/M     request faults only for these HTTP methods, e.g. `methods=POST/DELETE`

Request faults are decided before the request reaches the API, so a 429'd, 423'd, 5xx'd
or dropped create creates nothing; only `drop_after` lets the mutation happen. One draw
decides among drop, 429, 423 and 5xx in that order (shares summing above 1 favour the
earlier ones); `drop_after` is a separate draw. Admin routes (`/_local/…`) never fault.

A failed operation has no effect: a failed branch create removes the branch and its
endpoint (the client sees the operation `failed` and the branch gone, and may create it
again); a failed delete leaves the branch in place and usable; a failed restore leaves
the branch's data as it was. A failed endpoint, role or database change stays in the
API's records as its answer showed it, but PostgreSQL is left as it was.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cathouse_harness.errors import ConfigError

ENV_VAR = "CATHOUSE_LOCAL_FAULTS"

_RATES = ("rate429", "rate423", "rate5xx", "drop", "drop_after", "op_fail")
_SECONDS = ("latency", "retry_after", "op_delay")
_INTS = ("seed", "limit")


@dataclass(frozen=True)
class FaultConfig:
    latency: float = 0.0
    rate429: float = 0.0
    retry_after: float = 1.0
    rate423: float = 0.0
    rate5xx: float = 0.0
    drop: float = 0.0
    drop_after: float = 0.0
    op_delay: float = 0.0
    op_fail: float = 0.0
    seed: int | None = None
    limit: int | None = None
    methods: frozenset[str] | None = field(default=None)

    @property
    def active(self) -> bool:
        return self != FaultConfig(seed=self.seed)

    def to_spec(self) -> str:
        """The spec string `parse_faults` turns back into this config."""
        default = FaultConfig()
        parts = []
        for key in (*_SECONDS, *_RATES, *_INTS):
            value = getattr(self, key)
            if value != getattr(default, key):
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        if self.methods:
            parts.append("methods=" + "/".join(sorted(self.methods)))
        return ",".join(parts)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"] = sorted(self.methods) if self.methods else None
        data["spec"] = self.to_spec()
        return data


def _bad(message: str, source: str) -> ConfigError:
    return ConfigError(message, key=ENV_VAR, source=source, hint="see harness/local/sim/faults.py")


def _number(key: str, raw: Any, source: str) -> float:
    value = seconds_value(key, raw, lambda message: _bad(message, source))
    if key in _RATES and value > 1:
        raise _bad(f"{key} is a share between 0 and 1, got {raw!r}", source)
    return value


def _build(values: dict[str, Any], source: str) -> FaultConfig:
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if raw is None:
            continue
        if key in _RATES or key in _SECONDS:
            kwargs[key] = _number(key, raw, source)
        elif key in _INTS:
            try:
                kwargs[key] = int(raw)
            except (TypeError, ValueError):
                raise _bad(f"{key} must be an integer, got {raw!r}", source) from None
        elif key == "methods":
            items = raw.split("/") if isinstance(raw, str) else list(raw)
            kwargs[key] = frozenset(str(m).strip().upper() for m in items if str(m).strip())
        elif key != "spec":
            raise _bad(f"unknown fault {key!r}", source)
    return FaultConfig(**kwargs)


def split_spec(spec: str | None, bad: Callable[[str], ConfigError]) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"}; `bad(message)` makes the error for a part that
    is not key=value. The latency profile's spec (`cathouse_harness.local.sim.latency`) shares it."""
    values: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise bad(f"expected key=value, got {part!r}")
        values[key.strip()] = value.strip()
    return values


def seconds_value(key: str, raw: Any, bad: Callable[[str], ConfigError]) -> float:
    """A duration in seconds: a finite number >= 0, else `bad(message)`."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise bad(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise bad(f"{key} must be a finite number >= 0, got {raw!r}")
    return value


def parse_faults(spec: str | None, *, source: str = "environment") -> FaultConfig:
    """Parse a fault spec (format in the module docstring); ConfigError on a bad one."""
    return _build(split_spec(spec, lambda message: _bad(message, source)), source)


def faults_from_json(body: Any) -> FaultConfig:
    """The admin route's body: `{"spec": "..."}` or the fields as a JSON object."""
    if not isinstance(body, dict):
        raise _bad("expected a JSON object", "PUT /_local/faults")
    if "spec" in body:
        return parse_faults(str(body["spec"] or ""), source="PUT /_local/faults")
    return _build(body, "PUT /_local/faults")


@dataclass(frozen=True)
class RequestFault:
    kind: str  # "drop", "status" or "drop_after"
    status: int = 0


class FaultInjector:
    """The running faults: the config, its random generator and the injected count."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self.injected = 0
        self._random = random.Random(config.seed)

    def _budget_left(self) -> bool:
        return self.config.limit is None or self.injected < self.config.limit

    def before_request(self, method: str) -> RequestFault | None:
        """The fault for a request about to be served, or None."""
        cfg = self.config
        if cfg.methods is not None and method.upper() not in cfg.methods:
            return None
        if not self._budget_left():
            return None
        draw = self._random.random()
        fault: RequestFault | None = None
        edge = cfg.drop
        if draw < edge:
            fault = RequestFault("drop")
        elif draw < (edge := edge + cfg.rate429):
            fault = RequestFault("status", 429)
        elif draw < (edge := edge + cfg.rate423):
            fault = RequestFault("status", 423)
        elif draw < edge + cfg.rate5xx:
            fault = RequestFault("status", self._random.choice((500, 503)))
        elif cfg.drop_after and self._random.random() < cfg.drop_after:
            fault = RequestFault("drop_after")
        if fault is not None:
            self.injected += 1
        return fault

    def operation_fails(self) -> bool:
        return bool(self.config.op_fail) and self._random.random() < self.config.op_fail

    @property
    def retry_after_header(self) -> str:
        return str(math.ceil(self.config.retry_after))
