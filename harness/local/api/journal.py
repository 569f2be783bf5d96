"""The last API requests the local server answered, with when they came and went.

Kept so a benchmark can find which calls sit on a session's critical path (which ran
one after another, which overlapped) from the server's side, where every client's
requests meet; read through `GET /api/v2/_local/requests`. A bounded deque: a few
hundred bytes a request, the oldest forgotten first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

KEPT = 5000


@dataclass(frozen=True)
class JournalEntry:
    method: str
    path: str
    status: int
    received: float  # time.time() as the request reached the front door
    answered: float  # time.time() as its answer started (after the profile's way back)
    peer: int  # the client's TCP port: one connection's requests are one client's

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestJournal:
    def __init__(self, kept: int = KEPT) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=kept)

    def add(self, entry: JournalEntry) -> None:
        self._entries.append(entry)

    def since(self, moment: float) -> list[JournalEntry]:
        return [e for e in self._entries if e.received >= moment]
