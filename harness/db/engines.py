"""Service engines with the seed's settings, on URLs from `cathouse_harness.db.urls`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cathouse_harness.config.settings import ServiceConfig
from cathouse_harness.db.urls import is_pooled_url, normalize_asyncpg_url, verification_of
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

POOL_RECYCLE = 3600
POOL_TIMEOUT = 30
COMMAND_TIMEOUT = 60


def application_name(service: ServiceConfig) -> str:
    """`cat-house-<service name>`, as in the seed (e.g. cat-house-auth-service)."""
    return f"cat-house-{service.name}"


def engine_kwargs(
    service: ServiceConfig, *, echo: bool = False, pgbouncer: bool = False
) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine` with the seed's settings for `service`."""
    server_settings = {"application_name": application_name(service), "jit": "off"}
    if service.read_only and not pgbouncer:
        # PgBouncer refuses startup parameters it does not know; over a pooler the
        # per-transaction BEGIN READ ONLY below is what keeps the service read-only.
        server_settings["default_transaction_read_only"] = "on"
    connect_args: dict[str, Any] = {
        "server_settings": server_settings,
        "command_timeout": COMMAND_TIMEOUT,
    }
    if pgbouncer:
        # PgBouncer 1.18 in transaction mode does not track prepared statements: no
        # statement caches on either layer. asyncpg (>= 0.31) then prepares each statement
        # unnamed, which nothing can collide with and nothing has to close; a unique name
        # per statement would cost a Close round trip for every statement sent.
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
    kwargs: dict[str, Any] = {
        "pool_size": service.pool_size,
        "max_overflow": service.max_overflow,
        "pool_recycle": POOL_RECYCLE,
        "pool_pre_ping": True,
        "pool_timeout": POOL_TIMEOUT,
        "echo": echo,
        "connect_args": connect_args,
    }
    if service.read_only:
        # every transaction starts as BEGIN READ ONLY (asyncpg does it in the BEGIN itself,
        # so it costs no round trip and survives transaction pooling)
        kwargs["execution_options"] = {"postgresql_readonly": True}
    return kwargs


def tls_connect_args(url: str) -> dict[str, Any]:
    """`{"ssl": SSLContext}` when `url` names a root certificate (`sslrootcert`, which
    SQLAlchemy cannot pass to asyncpg), else nothing: asyncpg then reads `ssl=` from the
    URL and finds a CA through PGSSLROOTCERT or ~/.postgresql/root.crt."""
    verification = verification_of(url)
    if verification is None:
        return {}
    import ssl

    context = ssl.create_default_context(cafile=verification.ca_file)
    context.check_hostname = verification.check_hostname
    return {"ssl": context}


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key == "connect_args" and isinstance(value, Mapping):
            args = dict(merged.get("connect_args", {}))
            for arg, arg_value in value.items():
                if arg == "server_settings" and isinstance(arg_value, Mapping):
                    args["server_settings"] = {**args.get("server_settings", {}), **arg_value}
                else:
                    args[arg] = arg_value
            merged["connect_args"] = args
        else:
            merged[key] = value
    return merged


def create_service_engine(
    service: ServiceConfig,
    url: str,
    *,
    pgbouncer: bool | None = None,
    **overrides: Any,
) -> AsyncEngine:
    """An async engine for `service` on `url` with the seed's pool and server settings.

    `pgbouncer=None` turns the PgBouncer-safe settings on for Neon pooled URLs (host
    contains `-pooler`); pass True for any other transaction-mode pooler (the embedded
    default's PgBouncer). `overrides` win over the defaults; `connect_args` and its
    `server_settings` are merged key by key.
    """
    normalized = normalize_asyncpg_url(url)
    if pgbouncer is None:
        pgbouncer = is_pooled_url(normalized)
    echo = bool(overrides.pop("echo", False))
    base = engine_kwargs(service, echo=echo, pgbouncer=pgbouncer)
    base["connect_args"].update(tls_connect_args(url))
    kwargs = _merge(base, overrides)
    return create_async_engine(normalized, **kwargs)

