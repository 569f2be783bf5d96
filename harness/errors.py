"""The one error hierarchy of the harness.

Every error the harness raises on purpose is a `HarnessError`. Its `str()` is a single
line meant for a person at a terminal: what went wrong, where it came from, how to fix
it. Messages never carry secrets: callers pass URLs through `cathouse_harness.support.redact` first, and
`HarnessError.__init__` scrubs every registered secret as a last line of defence.
"""

from __future__ import annotations

from cathouse_harness.support.redact import scrub


class HarnessError(Exception):
    """Base class. `exit_code` is what the CLI exits with when this error ends a command."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = scrub(message)
        self.hint = scrub(hint) if hint else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class RelayedError(HarnessError):
    """An error another process of the run met and passed on (the xdist controller sets
    up every worker's branch): its line and exit code, as that process had them."""

    def __init__(self, line: str, *, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        super().__init__(line)


class ConfigError(HarnessError):
    """A bad setting or argument. Names the key and where its value came from."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        self.source = source
        prefix = ""
        if key and source:
            prefix = f"{key} (from {source}): "
        elif key:
            prefix = f"{key}: "
        super().__init__(prefix + message, hint=hint)


class NeonAPIError(HarnessError):
    """The Neon API (or the local server) answered with an error, or could not be reached.

    `status` is the HTTP status (0 when no answer arrived), `code` Neon's error code,
    `request_id` the id Neon gives for support requests.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.request_id = request_id
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method and path else ""
        status_part = f"HTTP {status}" if status else "no answer"
        extra = []
        if code:
            extra.append(f"code {code}")
        if request_id:
            extra.append(f"request id {request_id}")
        tail = f" [{', '.join(extra)}]" if extra else ""
        super().__init__(f"Neon API {where}{status_part}: {message}{tail}", hint=hint)

    @property
    def transient(self) -> bool:
        """True for failures worth retrying: no answer, 423, 429 and 5xx."""
        return self.status == 0 or self.status in (423, 429) or self.status >= 500


class MigrationError(HarnessError):
    """A service's migration failed. Names the service, the revision and the database error."""

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        revision: str | None = None,
        db_error: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.service = service
        self.revision = revision
        self.db_error = db_error
        parts = []
        if service:
            parts.append(f"service {service}")
        if revision:
            parts.append(f"revision {revision}")
        where = f"{', '.join(parts)}: " if parts else ""
        detail = f": {db_error}" if db_error else ""
        super().__init__(f"migration failed in {where}{message}{detail}", hint=hint)


class MigrationOrderError(MigrationError):
    """A service's migration needs another service's objects that migrate later: the
    configured order is wrong, which is a configuration fix (exit code 2)."""

    exit_code = 2


class SafetyError(HarnessError):
    """The harness refused to act on a branch it did not create, a default or protected one."""

    exit_code = 2


class WorkerDatabaseError(HarnessError):
    """An xdist worker's database (a copy of its branch's) could not be made or made again."""


class LocalServerError(HarnessError):
    """The embedded default (local Neon server, PostgreSQL, PgBouncer) failed to start or run."""


class UnsafePathError(HarnessError):
    """A file or directory the harness would use is not safely ours: another user made
    it, it is a link, or others may write to it. A setup problem to fix (exit code 2)."""

    exit_code = 2


class ApiError(HarnessError):
    """The local Neon server refuses a request: an HTTP status, a Neon-style error code
    and a message safe to show (it becomes the answer's `{"code", "message"}` body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
