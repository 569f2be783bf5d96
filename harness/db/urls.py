"""Connection URLs as asyncpg and SQLAlchemy take them.

Neon hands out libpq-style URLs (`postgresql://…?sslmode=require&channel_binding=require`).
asyncpg takes neither `sslmode` nor `channel_binding` as SQLAlchemy passes them, so
`normalize_asyncpg_url` rewrites the scheme and the query and leaves the rest of the URL
byte for byte as it was: a password that is URL-encoded stays encoded exactly the way the
user wrote it (SQLAlchemy decodes it once, when it connects).

Plain string work, apart from `cathouse_harness.db.engines`: handing out a branch's URLs must not
import SQLAlchemy (half a second of every test session that never builds an engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from cathouse_harness.errors import ConfigError

ASYNCPG_SCHEME = "postgresql+asyncpg"

# Schemes we accept as "a PostgreSQL URL"; anything else is a user mistake we name.
_POSTGRES_SCHEMES = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+pg8000",
}

# libpq sslmode -> asyncpg `ssl`. asyncpg understands the same mode names itself.
_SSLMODE_TO_ASYNCPG = {
    "disable": "disable",
    "allow": "allow",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify-full": "verify-full",
}

# libpq-only parameters asyncpg does not accept as keyword arguments. `sslrootcert`
# among them: SQLAlchemy would pass it to asyncpg.connect, which has no such argument;
# `cathouse_harness.db.engines` turns it into an SSLContext instead, and elsewhere asyncpg finds the
# CA through PGSSLROOTCERT (the `.env` we write and the migrations' environment set it).
_DROPPED_PARAMS = {"channel_binding", "sslmode", "sslrootcert", "connect_timeout_ms", "gssencmode"}


def _split_scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in _POSTGRES_SCHEMES:
        shown = scheme if sep else "(none)"
        raise ConfigError(
            f"not a PostgreSQL URL (scheme {shown!r})",
            key="database URL",
            hint="expected postgresql://user:password@host/dbname",
        )
    return scheme.lower(), rest


def _split_query(url: str) -> tuple[str, list[str], str | None]:
    """(everything between `://` and `?`, the query's `k=v` parts as written, fragment)."""
    _, rest = _split_scheme(url)
    base, hash_sep, fragment = rest.partition("#")
    base, query_sep, query = base.partition("?")
    parts = [p for p in query.split("&") if p] if query_sep else []
    return base, parts, fragment if hash_sep else None


def _join_query(scheme: str, base: str, parts: list[str], fragment: str | None) -> str:
    out = f"{scheme}://{base}"
    if parts:
        out += "?" + "&".join(parts)
    if fragment is not None:
        out += "#" + fragment
    return out


def normalize_asyncpg_url(url: str) -> str:
    """`url` rewritten for SQLAlchemy's asyncpg dialect.

    `postgres://`, `postgresql://` and driver-qualified schemes become
    `postgresql+asyncpg://`; `sslmode=X` becomes `ssl=X`; `channel_binding` is dropped
    (asyncpg negotiates SCRAM channel binding on its own). The user, password, host,
    path and every other query parameter are kept exactly as written.
    """
    base, parts, fragment = _split_query(url)
    kept: list[str] = []
    ssl_value: str | None = None
    explicit_ssl = False
    for part in parts:
        raw_key, _, raw_value = part.partition("=")
        key = unquote(raw_key)
        if key == "sslmode":
            mode = unquote(raw_value).strip().lower()
            if mode not in _SSLMODE_TO_ASYNCPG:
                raise ConfigError(
                    f"sslmode {mode!r} is not one of {', '.join(_SSLMODE_TO_ASYNCPG)}",
                    key="database URL",
                )
            ssl_value = _SSLMODE_TO_ASYNCPG[mode]
            continue
        if key == "ssl":
            explicit_ssl = True
        if key in _DROPPED_PARAMS:
            continue
        kept.append(part)
    if ssl_value is not None and not explicit_ssl:
        kept.append(f"ssl={ssl_value}")
    return _join_query(ASYNCPG_SCHEME, base, kept, fragment)


def with_database(url: str, database: str) -> str:
    """`url` naming `database` instead of the one it names; the rest kept as written."""
    base, parts, fragment = _split_query(url)
    netloc = base.partition("/")[0]
    scheme, _ = _split_scheme(url)
    return _join_query(scheme, f"{netloc}/{quote(database, safe='')}", parts, fragment)


def query_value(url: str, key: str) -> str | None:
    """The decoded value of query parameter `key` in a PostgreSQL URL, or None."""
    _, parts, _ = _split_query(url)
    for part in parts:
        raw_key, _, raw_value = part.partition("=")
        if unquote(raw_key) == key:
            return unquote(raw_value)
    return None


@dataclass(frozen=True)
class Verification:
    """How a URL asks its server's certificate to be checked: against `ca_file`, and
    the host name too when `check_hostname` (libpq's verify-full)."""

    ca_file: str
    check_hostname: bool


def verification_of(url: str) -> Verification | None:
    """The certificate check a URL asks for with `sslrootcert`, as libpq reads it: with a
    root certificate, `require` and `verify-ca` verify the chain, `verify-full` the host
    too; None when the URL names no root certificate or turns TLS off."""
    ca_file = query_value(url, "sslrootcert")
    mode = (query_value(url, "sslmode") or query_value(url, "ssl") or "prefer").strip().lower()
    if not ca_file or ca_file == "system" or mode not in ("require", "verify-ca", "verify-full"):
        return None
    return Verification(ca_file, mode == "verify-full")


def is_pooled_url(url: str) -> bool:
    """True for Neon's pooled endpoint (PgBouncer in transaction mode): host has `-pooler`."""
    _, rest = _split_scheme(url)
    host = urlsplit("//" + rest).hostname or ""
    return "-pooler" in host


def libpq_url(url: str, scheme: str = "postgresql") -> str:
    """`url` with its scheme set to `scheme` (a libpq-based driver: psycopg, psycopg2) and
    its query in libpq's words: an asyncpg `ssl=X` becomes `sslmode=X`. Everything else is
    kept byte for byte, as `normalize_asyncpg_url` does."""
    base, parts, fragment = _split_query(url)
    keys = {unquote(p.partition("=")[0]) for p in parts}
    kept = []
    for part in parts:
        raw_key, _, raw_value = part.partition("=")
        if unquote(raw_key) == "ssl":
            if "sslmode" in keys:
                continue
            part = f"sslmode={raw_value}"
        kept.append(part)
    return _join_query(scheme, base, kept, fragment)


# `url_driver` names (config, `{url:<driver>}` in an env mapping) -> their SQLAlchemy scheme;
# `libpq` is the plain form psycopg, psycopg2 and libpq itself all take.
DRIVER_SCHEMES = {
    "asyncpg": ASYNCPG_SCHEME,
    "psycopg": "postgresql+psycopg",
    "psycopg2": "postgresql+psycopg2",
    "libpq": "postgresql",
}


def url_for_driver(url: str, driver: str) -> str:
    """`url` in the form one driver takes: the one place that knows the forms.

    `driver` is a `url_driver` name (asyncpg, psycopg, psycopg2, libpq) or a SQLAlchemy
    scheme (`postgresql+asyncpg`, ...). asyncpg's form has `ssl=` for `sslmode` and no
    `channel_binding` (`normalize_asyncpg_url`); every other form keeps libpq's query
    (`libpq_url`). The rest of the URL is kept as written."""
    scheme = DRIVER_SCHEMES.get(driver.strip().lower(), driver.strip().lower())
    if scheme == ASYNCPG_SCHEME:
        return normalize_asyncpg_url(url)
    return libpq_url(url, scheme)


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes: host, port and database name (the user does not matter:
    any role reaching this database reaches the same data)."""

    host: str
    port: int
    database: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.database}"


def endpoint_of(url: str) -> Endpoint:
    """The endpoint a PostgreSQL URL connects to (libpq's defaults for what it leaves out)."""
    _, rest = _split_scheme(url)
    parts = urlsplit("//" + rest)
    try:
        port = parts.port or 5432
    except ValueError:
        raise ConfigError("has a port that is not a number", key="database URL") from None
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "")
    return Endpoint((parts.hostname or "").lower(), port, database)


def url_from_argument(value: str, key: str = "--url") -> str:
    """A URL given on the command line: `-` reads it from standard input. One with a
    password is refused: every local user can read a process's arguments (ps, /proc)."""
    if value == "-":
        import sys

        line = sys.stdin.readline().strip()
        if not line:
            raise ConfigError("got nothing on standard input", key=key,
                              hint="pipe the URL in: printf '%s\\n' \"$URL\" | ... --url -")
        return line
    try:
        has_password = urlsplit(value).password is not None
    except ValueError:
        has_password = ":" in value.partition("@")[0].partition("://")[2] and "@" in value
    if has_password:
        raise ConfigError(
            "holds a password, which other local users can read in the process list",
            key=key,
            hint="set MIGRATION_DATABASE_URL instead, or pass --url - and pipe the URL in",
        )
    return value
