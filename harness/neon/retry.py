"""When to try a Neon API request again, and how long to wait first.

The decisions live here as plain functions so the client's loop stays short:
which answers are worth another attempt, which failures may have reached the server
(that matters for the one request that is not idempotent, branch create), and the
capped exponential backoff with full jitter bounded by an overall deadline.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

# Statuses worth another attempt. 423: another operation holds the project lock and
# it clears by itself; 429: rate limited; the 5xx are gateway and overload answers.
RETRY_STATUSES = frozenset({423, 429, 500, 502, 503, 504})

# Statuses by which the server says it refused before acting, so re-sending any request,
# even a create, cannot double anything.
REJECTED_STATUSES = frozenset({423, 429})

# The request never left this machine: the connection (or a pool slot) was not obtained.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# Failures of the transport worth another attempt. Everything else (a malformed URL,
# a local protocol misuse) is a bug that another attempt would only repeat.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts every attempt, the first included; `deadline` (seconds) bounds
    the whole request, waits included; delays grow from `base_delay` up to `max_delay`."""

    max_attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 5.0
    deadline: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.deadline <= 0:
            raise ValueError("RetryPolicy delays must be >= 0 and the deadline > 0")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The pause after failed attempt number `attempt` (1-based), before any cap.

        Full jitter (a uniform draw below the exponential ceiling) keeps many clients
        that failed together from coming back together.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling

    def next_delay(
        self,
        attempt: int,
        *,
        remaining: float,
        retry_after: float | None,
        rng: random.Random,
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up.

        `remaining` is what is left of the deadline. A server's Retry-After wins over our
        own backoff (it knows when it will accept us), but never past the deadline.
        """
        if attempt >= self.max_attempts or remaining <= 0:
            return None
        delay = retry_after if retry_after is not None else self.backoff(attempt, rng)
        return max(0.0, min(delay, remaining))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def status_is_retryable(status: int) -> bool:
    return status in RETRY_STATUSES


def status_may_have_acted(status: int) -> bool:
    """A 5xx can come from a gateway after the backend did the work."""
    return status >= 500


def exception_is_retryable(exc: BaseException, api_host: str | None = None) -> bool:
    """Transient transport failures, except a refused connection to a loopback API host:
    nothing listens on that port of this machine (the local server stopped, or a wrong
    port was configured), and no retry within seconds changes that. A refused connection
    to a remote host (Neon's) can be a balancer changing hands, so it is still retried."""
    if not isinstance(exc, _TRANSIENT):
        return False
    return not (api_host is not None and _on_loopback(api_host) and connection_refused(exc))


def connection_refused(exc: BaseException) -> bool:
    """True when the exception, or one it was raised from, is a refused TCP connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _on_loopback(api_host: str) -> bool:
    host = (urlsplit(api_host).hostname or "").lower()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def exception_may_have_reached(exc: BaseException) -> bool:
    """False only when the request provably never left: no connection was made."""
    return not isinstance(exc, _NOT_SENT)
