"""URL normalisation and service engines, checked on live connections."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cathouse_harness.config.settings import ServiceConfig, Settings, check_pool_budget
from cathouse_harness.db.engines import create_service_engine, engine_kwargs
from cathouse_harness.db.urls import is_pooled_url, normalize_asyncpg_url
from cathouse_harness.errors import ConfigError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

AUTH = ServiceConfig(name="auth-service", schema="auth", pool_size=2, max_overflow=1)
PROXY = ServiceConfig(name="proxy-service", pool_size=1, max_overflow=0, read_only=True)
NEON_HOST = "ep-cool-darkness-123456.eu-central-1.aws.neon.tech"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            f"postgresql://u:p@{NEON_HOST}/cathouse?sslmode=require&channel_binding=require",
            f"postgresql+asyncpg://u:p@{NEON_HOST}/cathouse?ssl=require",
        ),
        (
            f"postgres://u:p@{NEON_HOST}/cathouse?sslmode=require",
            f"postgresql+asyncpg://u:p@{NEON_HOST}/cathouse?ssl=require",
        ),
        (
            f"postgresql+asyncpg://u:p@{NEON_HOST}/cathouse?sslmode=require",
            f"postgresql+asyncpg://u:p@{NEON_HOST}/cathouse?ssl=require",
        ),
        (
            "postgresql://u@127.0.0.1:5432/db?sslmode=disable",
            "postgresql+asyncpg://u@127.0.0.1:5432/db?ssl=disable",
        ),
        ("postgresql://u@h/db?sslmode=verify-full", "postgresql+asyncpg://u@h/db?ssl=verify-full"),
        ("postgresql://u@h/db?sslmode=verify-ca", "postgresql+asyncpg://u@h/db?ssl=verify-ca"),
        ("postgresql://u@h/db?sslmode=prefer", "postgresql+asyncpg://u@h/db?ssl=prefer"),
        ("postgresql://u@h/db?channel_binding=disable", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        # other parameters survive byte for byte, in order
        (
            "postgresql://u@h/db?options=endpoint%3Dep-x&sslmode=require&timeout=5",
            "postgresql+asyncpg://u@h/db?options=endpoint%3Dep-x&timeout=5&ssl=require",
        ),
        # an explicit ssl= wins over sslmode
        ("postgresql://u@h/db?ssl=verify-full&sslmode=require", "postgresql+asyncpg://u@h/db?ssl=verify-full"),
    ],
)
def test_normalize_asyncpg_url(given, expected):
    assert normalize_asyncpg_url(given) == expected


@pytest.mark.parametrize(
    "password", ["p@ss:w/rd", "100% sure", "a+b c", "x%2Fy", "qu?ery#frag&=", "ünïcødé"]
)
def test_encoded_passwords_survive(password):
    from urllib.parse import quote

    encoded = quote(password, safe="")
    url = f"postgresql://cathouse_owner:{encoded}@{NEON_HOST}/cathouse?sslmode=require"
    normalized = normalize_asyncpg_url(url)
    # the user's encoding is kept exactly, and decodes back to the real password
    assert f"cathouse_owner:{encoded}@{NEON_HOST}" in normalized
    parsed = make_url(normalized)
    assert parsed.password == password
    assert parsed.host == NEON_HOST and parsed.database == "cathouse"
    assert parsed.query == {"ssl": "require"}


def test_bad_urls_are_config_errors_without_password():
    for url in ("mysql://u:SecretPw123@h/db", "SecretPw123", "postgresql://u:SecretPw123@h/db?sslmode=sometimes"):
        with pytest.raises(ConfigError) as caught:
            normalize_asyncpg_url(url)
        assert "SecretPw123" not in str(caught.value)


def test_pooled_urls_are_recognised():
    pooled = NEON_HOST.replace("-123456", "-123456-pooler")
    assert is_pooled_url(f"postgresql://u:p@{pooled}/cathouse?sslmode=require")
    assert not is_pooled_url(f"postgresql://u:p@{NEON_HOST}/cathouse?sslmode=require")


def test_engine_kwargs_hold_the_seed_settings():
    kwargs = engine_kwargs(AUTH)
    assert kwargs["pool_size"] == 2 and kwargs["max_overflow"] == 1
    assert kwargs["pool_recycle"] == 3600 and kwargs["pool_pre_ping"] is True
    assert kwargs["pool_timeout"] == 30 and kwargs["echo"] is False
    assert kwargs["connect_args"] == {
        "server_settings": {"application_name": "cat-house-auth-service", "jit": "off"},
        "command_timeout": 60,
    }
    assert "execution_options" not in kwargs


def test_engine_kwargs_for_pgbouncer():
    args = engine_kwargs(AUTH, pgbouncer=True)["connect_args"]
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_cache_size"] == 0
    # unnamed statements: no name to collide across server connections, none to close
    assert "prepared_statement_name_func" not in args
    proxy = engine_kwargs(PROXY, pgbouncer=True)
    # PgBouncer refuses unknown startup parameters: read-only rides on BEGIN READ ONLY
    assert "default_transaction_read_only" not in proxy["connect_args"]["server_settings"]
    assert proxy["execution_options"] == {"postgresql_readonly": True}


def test_pool_budget(tmp_path: Path):
    services = (AUTH, ServiceConfig(name="b", pool_size=5, max_overflow=3))
    assert Settings(project_root=tmp_path, services=(AUTH, PROXY)).pool_budget == 4
    check_pool_budget((AUTH, PROXY), 4, "test")
    with pytest.raises(ConfigError, match="pools need 11 connections"):
        check_pool_budget(services, 10, "test")


async def test_live_engine_has_the_seed_settings(fresh_database_url):
    engine = create_service_engine(AUTH, fresh_database_url + "?sslmode=disable")
    try:
        async with engine.connect() as connection:
            assert (await connection.scalar(text("SHOW application_name"))) == (
                "cat-house-auth-service"
            )
            assert (await connection.scalar(text("SHOW jit"))) == "off"
            assert (await connection.scalar(text("SHOW default_transaction_read_only"))) == "off"
            raw = await connection.get_raw_connection()
            assert raw.driver_connection._config.command_timeout == 60
        pool = engine.pool
        assert pool.size() == 2 and pool._max_overflow == 1
        assert pool.timeout() == 30 and pool._recycle == 3600 and pool._pre_ping
        # all three connections of the budget can be held at once, not a fourth
        held = [await engine.connect() for _ in range(3)]
        assert pool.checkedout() == 3 and pool.overflow() == 1
        for connection in held:
            await connection.close()
    finally:
        await engine.dispose()


async def test_pgbouncer_safe_engine_works_on_plain_postgres(fresh_database_url):
    engine = create_service_engine(AUTH, fresh_database_url, pgbouncer=True)
    try:
        async with engine.connect() as connection:
            for _ in range(3):  # no cached statements to collide with
                assert await connection.scalar(text("SELECT 1")) == 1
            # Nothing named is left on the server connection for a pooler to hand to
            # another client: not even the statement that asks.
            assert await connection.scalar(text("SELECT count(*) FROM pg_prepared_statements")) == 0
            raw = await connection.get_raw_connection()
            assert raw.driver_connection._stmt_cache.get_max_size() == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize("pgbouncer", [False, True])
async def test_read_only_service_cannot_write(fresh_database_url, pgbouncer):
    setup = create_service_engine(AUTH, fresh_database_url)
    table = f"t_{uuid.uuid4().hex[:8]}"
    async with setup.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {table} (id int)"))
        await connection.execute(text(f"INSERT INTO {table} VALUES (1)"))
    await setup.dispose()
    engine = create_service_engine(PROXY, fresh_database_url, pgbouncer=pgbouncer)
    try:
        async with engine.connect() as connection:
            assert (await connection.scalar(text(f"SELECT count(*) FROM {table}"))) == 1
            assert (await connection.scalar(text("SHOW transaction_read_only"))) == "on"
            assert (await connection.scalar(text("SHOW application_name"))) == (
                "cat-house-proxy-service"
            )
        with pytest.raises(DBAPIError) as caught:
            async with engine.begin() as connection:
                await connection.execute(text(f"INSERT INTO {table} VALUES (2)"))
        assert getattr(caught.value.orig, "sqlstate", None) == "25006"  # read_only_sql_transaction
        assert engine.pool.size() == 1 and engine.pool._max_overflow == 0
    finally:
        await engine.dispose()


async def test_overrides_merge_server_settings(fresh_database_url):
    engine = create_service_engine(
        AUTH, fresh_database_url, pool_size=1,
        connect_args={"server_settings": {"statement_timeout": "5000"}},
    )
    try:
        async with engine.connect() as connection:
            assert (await connection.scalar(text("SHOW statement_timeout"))) == "5s"
            assert (await connection.scalar(text("SHOW jit"))) == "off"
        assert engine.pool.size() == 1
    finally:
        await engine.dispose()
