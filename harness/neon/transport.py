"""HTTP for the Neon client: one httpx client, every request retried within one deadline.

`Transport.call` sends one logical request: it retries transient failures (`retry.py`),
honours Retry-After, and on a 423 (the project has running operations) lets the client
wait for those operations (`on_locked`) before the next attempt. Every other answer
becomes a `NeonAPIError` built from scrubbed text; no httpx exception (which holds the
request and its Authorization header) ever leaves this module.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from cathouse_harness.config.settings import DEFAULT_API_HOST
from cathouse_harness.errors import ConfigError, NeonAPIError
from cathouse_harness.neon.retry import (
    RetryPolicy,
    connection_refused,
    exception_is_retryable,
    exception_may_have_reached,
    parse_retry_after,
    status_is_retryable,
    status_may_have_acted,
)
from cathouse_harness.neon.stats import ApiStats, route_of
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.redact import register_secret, scrub

log = get_logger("neon")

Sleep = Callable[[float], Awaitable[None]]
# (request path, deadline) -> True when it waited for the project's operations
OnLocked = Callable[[str, float], Awaitable[bool]]


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any


@dataclass(frozen=True)
class _Failure:
    """One failed attempt, kept as plain text so no httpx object outlives it."""

    status: int  # 0: no answer
    message: str
    method: str
    path: str
    code: str | None = None
    request_id: str | None = None
    hint: str | None = None
    retryable: bool = False
    may_have_acted: bool = True
    retry_after: float | None = None

    def error(self, attempts: int = 1, seconds: float | None = None) -> NeonAPIError:
        message = self.message
        if self.retryable and attempts:
            plural = "attempt" if attempts == 1 else "attempts"
            spent = f" in {seconds:.1f}s" if seconds is not None else ""
            message += f" (gave up after {attempts} {plural}{spent})"
        return NeonAPIError(
            message,
            status=self.status,
            code=self.code,
            request_id=self.request_id,
            method=self.method,
            path=self.path,
            hint=self.hint,
        )


class Progress:
    """What one logical request has been through so far."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.started = clock()
        self.attempts = 0
        self.may_have_acted = False


@dataclass(frozen=True)
class TransportOptions:
    """How a `Transport` (and so a `NeonClient`) reaches the API, the key aside: the key
    is passed on its own so that it is registered as a secret and no repr holds it.

    `transport` swaps httpx's network layer (tests answer from a handler); `sleep`,
    `clock` and `rng` exist so tests can run retries and polling without waiting."""

    api_host: str = DEFAULT_API_HOST
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0  # seconds one attempt may take
    transport: httpx.AsyncBaseTransport | None = None
    user_agent: str = "cathouse-harness/0.1"
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None  # None: a generator of the transport's own


def _refused_hint(exc: BaseException, api_host: str) -> str | None:
    if not connection_refused(exc):
        return None
    return f"nothing accepts connections at {api_host}: check api_host / NEON_API_HOST"


class Transport:
    """The HTTP side of one `NeonClient`: `options` say where and how, `on_locked` is the
    client's wait on a project's operations after a 423."""

    def __init__(
        self, api_key: str, options: TransportOptions | None = None, *, on_locked: OnLocked | None = None
    ) -> None:
        if not api_key:
            raise ConfigError("is empty", key="NEON_API_KEY", hint="set it to a Neon API key")
        register_secret(api_key)
        options = options or TransportOptions()
        self.api_host = options.api_host.rstrip("/")
        self.retry = options.retry
        self.timeout = options.timeout
        self.stats = ApiStats()
        self._sleep = options.sleep
        self._clock = options.clock
        self._rng = options.rng or random.Random()
        self._on_locked = on_locked
        self._http = httpx.AsyncClient(
            base_url=self.api_host + "/",
            # Plain http (the local server on loopback) has no TLS to verify; httpx would
            # still load the CA bundle for it, 50-100 ms of every session's start.
            verify=not self.api_host.startswith("http://"),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": options.user_agent,
            },
            timeout=options.timeout,
            transport=options.transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def attempt(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Any,
        deadline_at: float,
        progress: Progress,
    ) -> Answer | _Failure:
        """Send once. Never raises for HTTP or transport trouble; the caller decides."""
        remaining = deadline_at - self._clock()
        # A last attempt right at the deadline still gets a fair chance to answer.
        per_attempt = max(min(self.timeout, remaining), min(self.timeout, 1.0))
        started = time.perf_counter()
        outcome: Answer | _Failure
        status: int | None = None
        try:
            response = await self._http.request(
                method, path, params=params, json=body, timeout=per_attempt
            )
        except httpx.HTTPError as exc:
            # Keep only scrubbed text; the exception holds the request and its headers.
            detail = scrub(str(exc)).strip()
            name = type(exc).__name__
            outcome = _Failure(
                status=0,
                message=f"{name}: {detail}" if detail else name,
                method=method,
                path=path,
                retryable=exception_is_retryable(exc, self.api_host),
                may_have_acted=exception_may_have_reached(exc),
                hint=_refused_hint(exc, self.api_host),
            )
        else:
            status = response.status_code
            outcome = self._read(response, method, path)
        elapsed = time.perf_counter() - started
        self.stats.record(route_of(method, path), status, elapsed, retry=progress.attempts > 0)
        progress.attempts += 1
        what = status if status is not None else getattr(outcome, "message", "no answer")
        log.debug(
            "%s %s -> %s in %.1f ms (attempt %d)",
            method,
            path,
            what,
            elapsed * 1000,
            progress.attempts,
        )
        return outcome

    def _read(self, response: httpx.Response, method: str, path: str) -> Answer | _Failure:
        status = response.status_code
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = None
        if 200 <= status < 300:
            if data is None:
                return _Failure(
                    status=status,
                    message="the answer is not JSON",
                    method=method,
                    path=path,
                    may_have_acted=True,
                )
            return Answer(status, data)
        body = data if isinstance(data, Mapping) else {}
        message = body.get("message") or response.reason_phrase or "error"
        if not body and response.text:
            message = f"{message}: {response.text.strip()[:200]}"
        request_id = (
            body.get("request_id")
            or response.headers.get("x-neon-ret-request-id")
            or response.headers.get("x-request-id")
        )
        hint = None
        if status == 401:
            hint = "check NEON_API_KEY"
        elif status == 403:
            hint = "check NEON_API_KEY has access to this project"
        retryable = status_is_retryable(status)
        return _Failure(
            status=status,
            message=scrub(str(message)),
            method=method,
            path=path,
            code=str(body["code"]) if body.get("code") else None,
            request_id=str(request_id) if request_id else None,
            hint=hint,
            retryable=retryable,
            may_have_acted=status_may_have_acted(status),
            retry_after=parse_retry_after(response.headers.get("retry-after"))
            if retryable
            else None,
        )

    async def pause(self, failure: _Failure, progress: Progress, deadline_at: float) -> bool:
        """Wait before the next attempt; False when no attempt is left."""
        if not failure.retryable:
            return False
        if (
            failure.status == 423
            and failure.method != "GET"  # Neon locks mutations only
            and self._on_locked is not None
            and await self._on_locked(failure.path, deadline_at)
        ):
            return True
        delay = self.retry.next_delay(
            progress.attempts,
            remaining=deadline_at - self._clock(),
            retry_after=failure.retry_after,
            rng=self._rng,
        )
        if delay is None:
            return False
        what = failure.status or failure.message
        log.debug(
            "retrying %s %s after %s in %.3fs (attempt %d of %d)",
            failure.method,
            failure.path,
            what,
            delay,
            progress.attempts + 1,
            self.retry.max_attempts,
        )
        self.stats.waited += delay
        await self._sleep(delay)
        return True

    def give_up(self, failure: _Failure, progress: Progress) -> NeonAPIError:
        return failure.error(progress.attempts, self._clock() - progress.started)

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        accept: frozenset[int] = frozenset(),
        deadline_at: float | None = None,
        progress: Progress | None = None,
    ) -> Answer:
        """One idempotent request with retries. Statuses in `accept` answer with data None."""
        progress = progress or Progress(self._clock)
        if deadline_at is None:
            deadline_at = progress.started + self.retry.deadline
        while True:
            outcome = await self.attempt(
                method,
                path,
                params=params,
                body=body,
                deadline_at=deadline_at,
                progress=progress,
            )
            if isinstance(outcome, Answer):
                return outcome
            if outcome.status in accept:
                return Answer(outcome.status, None)
            progress.may_have_acted |= outcome.may_have_acted
            if not await self.pause(outcome, progress, deadline_at):
                raise self.give_up(outcome, progress)

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        deadline_at: float | None = None,
    ) -> Any:
        return (await self.call("GET", path, params=params, deadline_at=deadline_at)).data
