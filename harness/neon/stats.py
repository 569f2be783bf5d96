"""Counters of what the Neon client did, for the plugin's summary and the benchmarks."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# A path segment that follows one of these is an id; routes replace it with a name so
# that counts group by endpoint, not by branch.
_ID_AFTER = {
    "projects": "{project_id}",
    "branches": "{branch_id}",
    "endpoints": "{endpoint_id}",
    "operations": "{operation_id}",
    "roles": "{role_name}",
    "databases": "{database_name}",
}
_SLASHES = re.compile(r"/+")


def route_of(method: str, path: str) -> str:
    """`GET /projects/p1/branches/br-x` -> `GET /projects/{project_id}/branches/{branch_id}`."""
    segments = _SLASHES.sub("/", path.split("?", 1)[0]).strip("/").split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        prev = segments[i - 1] if i else ""
        out.append(_ID_AFTER.get(prev, segment))
    return f"{method.upper()} /{'/'.join(out)}"


@dataclass
class ApiStats:
    """Mutable counters; read them through `snapshot()`.

    calls: HTTP attempts sent; retries: attempts that repeated an earlier one;
    failures: attempts that got no answer or a non-2xx answer; seconds: time spent in
    HTTP attempts (not in backoff pauses or operation polling pauses); waited: seconds
    spent in backoff pauses; recovered_creates: creates answered by finding the branch
    by name after an attempt whose answer was lost; lock_waits: 423s answered by waiting
    for the project's running operations.
    """

    calls: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    waited: float = 0.0
    recovered_creates: int = 0
    lock_waits: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    def record(self, route: str, status: int | None, seconds: float, *, retry: bool) -> None:
        self.calls += 1
        self.retries += int(retry)
        self.seconds += seconds
        self.routes[route] += 1
        self.statuses[str(status) if status else "no answer"] += 1
        if status is None or not 200 <= status < 300:
            self.failures += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "failures": self.failures,
            "seconds": round(self.seconds, 6),
            "waited": round(self.waited, 6),
            "recovered_creates": self.recovered_creates,
            "lock_waits": self.lock_waits,
            "routes": dict(sorted(self.routes.items())),
            "statuses": dict(sorted(self.statuses.items())),
        }
