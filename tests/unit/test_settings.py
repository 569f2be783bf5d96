"""Settings: precedence, sources named in errors, validation of every field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings, parse_ttl
from cathouse_harness.errors import ConfigError

SERVICES = """
[[tool.cathouse_harness.services]]
name = "auth-service"
schema = "auth"
alembic_ini = "auth/alembic.ini"
pool_size = 2
max_overflow = 1

[[tool.cathouse_harness.services]]
name = "proxy-service"
read_only = true
pool_size = 1
max_overflow = 0
"""


def project(tmp_path: Path, body: str = "", services: str = SERVICES) -> Path:
    (tmp_path / "auth").mkdir(exist_ok=True)
    (tmp_path / "auth" / "alembic.ini").write_text("[alembic]\n")
    (tmp_path / "pyproject.toml").write_text(f"[tool.cathouse_harness]\n{body}\n{services}")
    return tmp_path


def test_defaults_and_toml(tmp_path: Path) -> None:
    settings = load_settings(project(tmp_path, 'branch_ttl = "10m"\ndatabase = "cats"'), environ={})
    assert settings.backend == "embedded"
    assert settings.branch_ttl == timedelta(minutes=10)
    assert settings.database == "cats"
    assert settings.role == "cathouse_owner"
    assert [s.name for s in settings.services] == ["auth-service", "proxy-service"]
    assert settings.services[0].alembic_ini == (tmp_path / "auth" / "alembic.ini").resolve()
    assert settings.pool_budget == 4
    assert [s.name for s in settings.migrating_services] == ["auth-service"]
    assert "pyproject.toml" in settings.source_of("branch_ttl")


def test_precedence_options_over_env_over_dotenv_over_toml(tmp_path: Path) -> None:
    root = project(tmp_path, 'parent_branch = "from-toml"')
    (root / ".env").write_text("CATHOUSE_PARENT_BRANCH=from-dotenv\n")
    assert load_settings(root, environ={}).parent_branch == "from-dotenv"
    env = {"CATHOUSE_PARENT_BRANCH": "from-env"}
    assert load_settings(root, environ=env).parent_branch == "from-env"
    chosen = load_settings(root, environ=env, options={"parent_branch": "from-cli"})
    assert chosen.parent_branch == "from-cli"
    assert chosen.source_of("parent_branch") == "command line"


def test_neon_backend_needs_key_and_project(tmp_path: Path) -> None:
    root = project(tmp_path)
    with pytest.raises(ConfigError, match="NEON_PROJECT_ID"):
        load_settings(root, environ={"NEON_API_KEY": "napi_abcdefgh"})
    settings = load_settings(root, environ={"NEON_API_KEY": "napi_abcdefgh", "NEON_PROJECT_ID": "p-1"})
    assert settings.backend == "neon"
    assert "napi_abcdefgh" not in repr(settings)
    with pytest.raises(ConfigError, match="needs an API key"):
        load_settings(root, environ={"CATHOUSE_BACKEND": "neon"})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CATHOUSE_BRANCH_TTL": "soon"}, "branch_ttl (from environment CATHOUSE_BRANCH_TTL)"),
        ({"CATHOUSE_BRANCH_TTL": "31d"}, "at most 30 days"),
        ({"CATHOUSE_BRANCH_TTL": "0m"}, "longer than zero"),
        ({"CATHOUSE_CONNECTION_LIMIT": "ten"}, "not a whole number"),
        ({"CATHOUSE_CONNECTION_LIMIT": "3"}, "pools need 4 connections"),
        ({"CATHOUSE_BACKEND": "cloud"}, "is not 'neon' or 'embedded'"),
        ({"NEON_API_HOST": "console.neon.tech"}, "is not an http(s) URL"),
        ({"CATHOUSE_KEEP_BRANCH": "sometimes"}, "never, on-failure, always"),
        ({"CATHOUSE_SCHEMA_ONLY": "maybe"}, "not true or false"),
        ({"CATHOUSE_WORKER_ISOLATION": "schema"}, "worker_isolation (from environment "
         "CATHOUSE_WORKER_ISOLATION): 'schema' is not 'database' or 'branch'"),
    ],
)
def test_bad_values_name_key_and_source(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project(tmp_path), environ=env)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("services", "needle"),
    [
        ('[[tool.cathouse_harness.services]]\nname="a"\nschema="auth"\nalembic_ini="missing.ini"\n',
         "does not exist"),
        ('[[tool.cathouse_harness.services]]\nname="a"\nschema="s"\n'
         '[[tool.cathouse_harness.services]]\nname="b"\nschema="s"\n', "already owned by a"),
        ('[[tool.cathouse_harness.services]]\nname="a"\n[[tool.cathouse_harness.services]]\nname="a"\n',
         "listed twice"),
        ('[[tool.cathouse_harness.services]]\nname="a"\nschema="bad-name"\n', "not a plain SQL identifier"),
        ('[[tool.cathouse_harness.services]]\nname="a"\nschema="auth"\nalembic_ini="auth/alembic.ini"\n'
         'read_only=true\n', "read_only service has no migrations"),
        ('[[tool.cathouse_harness.services]]\nname="a"\npool_size=0\n', "at least 1"),
        ('[[tool.cathouse_harness.services]]\nname="a"\ncolour="blue"\n', "unknown key 'colour'"),
    ],
)
def test_bad_services(tmp_path: Path, services: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(project(tmp_path, services=services), environ={})


def test_pool_budget_over_limit_names_services_and_limit(tmp_path: Path) -> None:
    services = "".join(
        f'[[tool.cathouse_harness.services]]\nname="s{i}"\npool_size=2\nmax_overflow=1\n' for i in range(4)
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(project(tmp_path, services=services), environ={})
    message = str(caught.value)
    assert "12 connections" in message and "connection_limit is 10" in message
    assert "s0 3" in message and "s3 3" in message


def test_unknown_toml_key_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'projectid'"):
        load_settings(project(tmp_path, 'projectid = "x"'), environ={})
    (tmp_path / "pyproject.toml").write_text("[tool.cathouse_harness\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path, environ={})


def test_unreadable_dotenv(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / ".env").mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(root, environ={})


def test_unknown_service_lookup(tmp_path: Path) -> None:
    settings = load_settings(project(tmp_path), environ={})
    with pytest.raises(ConfigError, match="unknown service 'billing-service'"):
        settings.service("billing-service")


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("2h", 7200), ("1d", 86400), ("90s", 90), ("45", 45), (30, 30)]
)
def test_parse_ttl(text: object, seconds: int) -> None:
    assert parse_ttl(text) == timedelta(seconds=seconds)


def test_local_storage(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert load_settings(root, environ={}).local_storage == "memory"
    assert load_settings(root, environ={"CATHOUSE_LOCAL_STORAGE": "disk"}).local_storage == "disk"
    with pytest.raises(ConfigError, match="local_storage \\(from environment CATHOUSE_LOCAL_STORAGE\\)"):
        load_settings(root, environ={"CATHOUSE_LOCAL_STORAGE": "tape"})
