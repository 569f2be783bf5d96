"""Keeping secrets out of output.

Two tools: `redact_url` hides the password inside a connection URL, and a process-wide
registry of known secret values (API keys, role passwords) that `scrub` removes from any
text. `SecretFilter` applies `scrub` to every log record of the harness logger, and
`HarnessError` applies it to every message, so a secret that slips into a string is still
caught before a person sees it.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# Values shorter than this are too likely to occur by chance in ordinary text.
_MIN_SECRET_LEN = 6

# A secret cut short where a long value is shown abbreviated ('abc...xyz', as pytest's
# assertion and -l output do): the part beside the dots is masked when it is at least
# this long a piece of a secret's start or end.
_MIN_FRAGMENT = 4
_TRUNCATED = re.compile(r"(?P<before>[^\s'\"]*)\.\.\.(?P<after>[^\s'\"]*)")

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]*)@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]+")


def register_secret(value: str | None) -> None:
    """Remember a secret so that `scrub` removes it (and its URL-encoded form) from text."""
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        _secrets.add(value)
        encoded = quote(value, safe="")
        if encoded != value:
            _secrets.add(encoded)


def register_url(url: str) -> None:
    """Remember a connection URL and the password inside it, which tests may show alone."""
    register_secret(url)
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        register_secret(unquote(password))


def scrub(text: str) -> str:
    """Remove every registered secret, URL password and bearer token from `text`."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "..." in text:
        # URLs are left out: their start is a scheme and a user name, not a secret
        atomic = [secret for secret in secrets if "://" not in secret]
        text = _TRUNCATED.sub(lambda m: _mask_cut(m["before"], m["after"], atomic), text)
    return text


def _mask_cut(before: str, after: str, secrets: list[str]) -> str:
    """`before...after` with a secret's start at the end of `before`, or its end at the
    start of `after`, masked."""
    for secret in secrets:
        for size in range(min(len(before), len(secret)), _MIN_FRAGMENT - 1, -1):
            if before.endswith(secret[:size]):
                before = before[:-size] + MASK
                break
        for size in range(min(len(after), len(secret)), _MIN_FRAGMENT - 1, -1):
            if after.startswith(secret[-size:]):
                after = MASK + after[size:]
                break
    return f"{before}...{after}"


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`; everything else unchanged."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL, or a port that is not a number
        return scrub(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(unquote(user), safe='')}:{MASK}@{host}"
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Secret(str):
    """A string whose repr and str in f-strings via `!r` never show the value.

    It still behaves as the plain value where the value is needed (headers, URLs), so
    code must take care never to format it into a message; `scrub` backs that up.
    """

    def __new__(cls, value: str) -> Secret:
        register_secret(value)
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)


class SecretFilter(logging.Filter):
    """Scrubs secrets from log records before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            return True
        record.msg = scrub(message)
        record.args = None
        return True


def install_log_filter(logger_name: str = "cathouse_harness") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())
