"""The project's own environment variables, pointed at the branch.

An application reads its database settings under names of its own (`POSTGRES_SERVER`,
`DATABASE__HOSTNAME`, `APP_DATABASE_URL`, ...), often at import. `[tool.cathouse_harness.env]`
(and the same table inside a service's entry) maps each such name onto a template of the
branch's connection:

    POSTGRES_SERVER = "{host}"
    APP_DATABASE_URL = "{url:psycopg}"

Placeholders: {host} {port} {user} {password} {database} {sslmode} {sslrootcert}, and
{url} / {direct_url} with an optional driver form (`:asyncpg`, `:psycopg`, `:psycopg2`,
`:libpq`). `{{` and `}}` are literal braces. Every template is checked when the
settings are read, so a typo is one line naming the key and its file, never a value that
reaches the application half-filled.

Which endpoint the values describe is the caller's choice: the test process renders
them from the pooled (runtime) URL, a service's migration from the direct one.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cathouse_harness.db.urls import DRIVER_SCHEMES, query_value, url_for_driver
from cathouse_harness.errors import ConfigError

FIELDS = ("host", "port", "user", "password", "database", "sslmode", "sslrootcert")
URL_FIELDS = ("url", "direct_url")
DRIVERS = tuple(DRIVER_SCHEMES)
# what a shell (and os.environ on every platform) accepts as a variable name
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TABLE_HINT = 'e.g. POSTGRES_SERVER = "{host}" or APP_DATABASE_URL = "{url:psycopg}"'


@dataclass(frozen=True)
class AppEnv:
    """Variable name -> template, in the order written (hashable: services are cache keys)."""

    entries: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def merged(self, own: AppEnv) -> AppEnv:
        """This table with `own`'s entries added, `own` winning for a name in both."""
        mine = dict(own.entries)
        kept = tuple((n, t) for n, t in self.entries if n not in mine)
        return AppEnv(kept + own.entries)

    def render(self, url: str, *, direct_url: str, driver: str) -> dict[str, str]:
        """Each name's value for the endpoint at `url`. `{url}` is `url` and `{direct_url}`
        is `direct_url`, each in `driver`'s form unless the placeholder names another."""
        return {name: _render(template, url, direct_url, driver) for name, template in self.entries}


def parse_env(raw: Any, key: str, source: str) -> AppEnv:
    """A mapping table as read from TOML, checked: names, placeholders, driver forms."""
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of NAME = \"template\"", key=key, source=source,
                          hint=_TABLE_HINT)
    entries: list[tuple[str, str]] = []
    for name, template in raw.items():
        where = f"{key}.{name}"
        if not _NAME.fullmatch(str(name)):
            raise ConfigError(
                f"{name!r} is not an environment variable name", key=key, source=source,
                hint="use letters, digits and _, not starting with a digit",
            )
        if not isinstance(template, str):
            raise ConfigError(f"must be a string, not {type(template).__name__}", key=where,
                              source=source, hint=_TABLE_HINT)
        _check_template(template, where, source)
        entries.append((str(name), template))
    return AppEnv(tuple(entries))


def _fields(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(string.Formatter().parse(template))


def _check_template(template: str, key: str, source: str) -> None:
    known = ", ".join("{" + f + "}" for f in (*FIELDS, *URL_FIELDS))
    try:
        parts = _fields(template)
    except ValueError as exc:
        raise ConfigError(f"{template!r} is not a template ({exc})", key=key, source=source,
                          hint="write a literal brace as {{ or }}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        shown = "{" + field + (f":{spec}" if spec else "") + "}"
        if conversion is not None:
            raise ConfigError(f"{shown}!{conversion} is not a placeholder", key=key, source=source,
                              hint=f"placeholders: {known}")
        if field not in FIELDS and field not in URL_FIELDS:
            raise ConfigError(f"unknown placeholder {shown}", key=key, source=source,
                              hint=f"placeholders: {known}")
        if spec and field not in URL_FIELDS:
            raise ConfigError(f"{shown}: only {{url}} and {{direct_url}} take a driver form",
                              key=key, source=source, hint=f"write {{{field}}}")
        if spec and spec not in DRIVERS:
            raise ConfigError(
                f"{shown}: {spec!r} is not a driver form", key=key, source=source,
                hint=f"use one of {', '.join(':' + d for d in DRIVERS)}",
            )


def _render(template: str, url: str, direct_url: str, driver: str) -> str:
    out: list[str] = []
    for literal, field, spec, _ in _fields(template):
        out.append(literal)
        if field is None:
            continue
        if field in URL_FIELDS:
            out.append(url_for_driver(url if field == "url" else direct_url, spec or driver))
        else:
            out.append(url_parts(url)[field])
    return "".join(out)


def url_parts(url: str) -> dict[str, str]:
    """The placeholders' values for one URL (decoded, as an application takes them apart;
    what the URL leaves out is libpq's default or empty)."""
    parts = urlsplit("//" + url.partition("://")[2])
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return {
        "host": parts.hostname or "",
        "port": str(port),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")),
        "sslmode": query_value(url, "sslmode") or query_value(url, "ssl") or "",
        "sslrootcert": query_value(url, "sslrootcert") or "",
    }


def runtime_variables(
    env: AppEnv, url_driver: str | None, pooled_url: str, direct_url: str
) -> dict[str, str]:
    """What the test process (and `cathouse-branch up`'s .env) sets for a branch (`env`
    and `url_driver` are the settings'):
    DATABASE_URL (pooled) and MIGRATION_DATABASE_URL (direct) in the `url_driver` form
    (without one: asyncpg's and the plain form, as before `url_driver` existed), the CA
    that asyncpg's form cannot carry, and the project's own names from the pooled
    endpoint. A mapped name wins over ours: the project asked for it."""
    from cathouse_harness.config.envfile import ssl_root_env

    driver = url_driver or "asyncpg"
    values = {
        "DATABASE_URL": url_for_driver(pooled_url, driver),
        "MIGRATION_DATABASE_URL": url_for_driver(direct_url, url_driver or "libpq"),
        **ssl_root_env(direct_url),
    }
    values.update(env.render(pooled_url, direct_url=direct_url, driver=driver))
    return values
