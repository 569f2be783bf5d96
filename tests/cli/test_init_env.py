"""`cathouse-branch init` proposes `[tool.cathouse_harness.env]` from what the project
reads (issue #23 part 2): os.environ / os.getenv names, pydantic settings fields with their
prefix and nested delimiter, .env keys; and `url_driver` from its dependencies and env.py."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from cathouse_harness.cli.project_env import EnvLine, role_of
from cathouse_harness.cli.project_init import check_proposal, propose
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError

from tests.cli._support import cli
from tests.cli.test_init_histories import EXPLODES, write

SETTINGS = '''\
from enum import Enum

from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict


class SSLMode(str, Enum):
    DISABLE = "disable"
    REQUIRE = "require"


class DatabaseSettings(BaseModel):
    hostname: str = "localhost"
    port: int = 5432
    username: str = "app"
    password: str = ""
    db: str = "app"
    sslmode: SSLMode = SSLMode.DISABLE
    echo: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", env_nested_delimiter="__")

    debug: bool = False
    secret_key: str = ""
    database: DatabaseSettings = DatabaseSettings()


settings = Settings()
''' + EXPLODES

ENV_PY = '''\
import os

from alembic import context

host = os.environ["POSTGRES_SERVER"]
port = os.getenv("POSTGRES_PORT", "5432")
user = os.environ.get("POSTGRES_USER")
password = os.environ["POSTGRES_PASSWORD"]
name = os.environ["POSTGRES_DB"]
level = os.environ.get("LOG_LEVEL", "info")
context.configure(url=f"postgresql://{user}:{password}@{host}:{port}/{name}", version_table_schema="app")
'''

ENV_EXAMPLE = """\
# copy to .env
SECRET_KEY=change-me
DATABASE_URL=postgresql+psycopg://app:app@localhost:5432/app
MIGRATION_DATABASE_URL=postgresql+psycopg://app:app@localhost:5432/app
REDIS_URL=redis://localhost:6379/0
"""

def line_of(text: str, start: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith(start))


EXPECTED = {
    "POSTGRES_SERVER": "{host}",
    "POSTGRES_PORT": "{port}",
    "POSTGRES_USER": "{user}",
    "POSTGRES_PASSWORD": "{password}",
    "POSTGRES_DB": "{database}",
    "DATABASE_URL": "{url:psycopg}",
    "MIGRATION_DATABASE_URL": "{direct_url:psycopg}",
    "APP_DATABASE__HOSTNAME": "{host}",
    "APP_DATABASE__PORT": "{port}",
    "APP_DATABASE__USERNAME": "{user}",
    "APP_DATABASE__PASSWORD": "{password}",
    "APP_DATABASE__DB": "{database}",
    "APP_DATABASE__SSLMODE": "{sslmode}",
}


PSYCOPG = '"fastapi", "sqlalchemy>=2", "psycopg[binary]>=3.1"'


def fastapi_project(root: Path, dependencies: str = PSYCOPG) -> None:
    project = f'[project]\nname = "app"\nversion = "1"\ndependencies = [{dependencies}]\n'
    write(root / "pyproject.toml", project)
    write(root / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(root / "alembic" / "env.py", ENV_PY)
    write(root / "app" / "__init__.py", EXPLODES)
    write(root / "app" / "core" / "settings.py", SETTINGS)
    write(root / ".env.example", ENV_EXAMPLE)


def test_the_mapping_names_what_the_project_reads_and_yes_writes_it(tmp_path: Path) -> None:
    fastapi_project(tmp_path)
    code, out, err = cli("init", "--yes", cwd=tmp_path)
    assert code == 0, err
    table = tomllib.loads(out)["tool"]["cathouse_harness"]
    assert table["env"] == EXPECTED
    assert table["url_driver"] == "psycopg"
    assert f"env POSTGRES_SERVER = {{host}}: found in alembic/env.py:{line_of(ENV_PY, 'host =')}" in err
    assert f"env POSTGRES_PORT = {{port}}: found in alembic/env.py:{line_of(ENV_PY, 'port =')}" in err
    assert "env DATABASE_URL = {url:psycopg}: found in .env.example:3" in err
    hostname, db = line_of(SETTINGS, "hostname:"), line_of(SETTINGS, "db:")
    assert ("env APP_DATABASE__HOSTNAME = {host}: found in "
            f"app/core/settings.py:{hostname} (Settings.database.hostname)") in err
    assert ("env APP_DATABASE__DB = {database}: found in "
            f"app/core/settings.py:{db} (Settings.database.db)") in err
    assert "url_driver psycopg: the URL scheme of DATABASE_URL in .env.example:3" in err
    # the written table is the one printed, and one the harness loads
    written = (tmp_path / "pyproject.toml").read_text()
    assert tomllib.loads(written)["tool"]["cathouse_harness"]["env"] == EXPECTED
    assert f'APP_DATABASE__HOSTNAME = "{{host}}"  # found in app/core/settings.py:{hostname}' in written
    settings = load_settings(tmp_path, environ={})
    assert settings.env and settings.url_driver == "psycopg"


def test_json_says_where_each_name_was_found(tmp_path: Path) -> None:
    fastapi_project(tmp_path)
    (tmp_path / "alembic" / "env.py").write_text(ENV_PY + 'again = os.environ["POSTGRES_SERVER"]\n')
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["env"] == EXPECTED
    assert result["env_found"]["POSTGRES_SERVER"] == ["alembic/env.py:5", "alembic/env.py:12"]
    assert "env POSTGRES_SERVER = {host}: found in alembic/env.py:5 and 1 more" in err
    assert result["url_driver"] == "psycopg"


def test_an_async_env_py_with_asyncpg_proposes_asyncpg(tmp_path: Path) -> None:
    fastapi_project(tmp_path, '"asyncpg", "psycopg2-binary"')
    (tmp_path / ".env.example").write_text("DATABASE_URL=\n")  # no scheme to go by
    env_py = tmp_path / "alembic" / "env.py"
    env_py.write_text("from sqlalchemy.ext.asyncio import async_engine_from_config\n" + ENV_PY)
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["url_driver"] == "asyncpg"
    assert result["env"]["DATABASE_URL"] == "{url:asyncpg}"
    assert "url_driver asyncpg: alembic/env.py is async; asyncpg in pyproject.toml" in err
    assert "the dependencies name asyncpg, psycopg2" in err


def test_requirements_files_name_the_driver(tmp_path: Path) -> None:
    fastapi_project(tmp_path, '"fastapi"')
    (tmp_path / ".env.example").unlink()
    write(tmp_path / "requirements.txt", "fastapi==0.110\npsycopg2-binary==2.9.9  # the driver\n")
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["url_driver"] == "psycopg2"
    assert "url_driver psycopg2: psycopg2 in the dependencies (requirements.txt)" in err


def test_nothing_read_proposes_no_env_table(tmp_path: Path) -> None:
    write(tmp_path / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(tmp_path / "alembic" / "env.py", 'import os\nlevel = os.environ["LOG_LEVEL"]\n')
    code, out, err = cli("init", cwd=tmp_path)
    assert code == 0, err
    table = tomllib.loads(out)["tool"]["cathouse_harness"]
    assert "env" not in table and "url_driver" not in table
    assert "url_driver: no PostgreSQL driver in the dependencies; the default (asyncpg) stays" in err


@pytest.mark.parametrize(("name", "role"), [
    ("POSTGRES_SERVER", "host"), ("POSTGRES_HOST", "host"), ("DB_HOST", "host"), ("PGHOST", "host"),
    ("DATABASE__PORT", "port"), ("DB_USER", "user"), ("POSTGRES_USERNAME", "user"),
    ("DB_PASS", "password"), ("PGPASSWORD", "password"), ("POSTGRES_DB", "database"),
    ("DB_NAME", "database"), ("DATABASE_URL", "url"), ("SQLALCHEMY_DATABASE_URI", "url"),
    ("POSTGRES_DSN", "url"), ("ALEMBIC_DATABASE_URL", "direct_url"), ("DB_SSLMODE", "sslmode"),
    ("DATABASE", None), ("DB_POOL_SIZE", None), ("DB_PASSWORD_FILE", None), ("REDIS_URL", None),
    ("REDIS_HOST", None), ("SECRET_KEY", None), ("PORT", None), ("HOST", None),
])
def test_which_names_are_database_settings(name: str, role: str | None) -> None:
    assert role_of(name) == role


def test_own_prefixes_aliases_and_pydantic_v1_config(tmp_path: Path) -> None:
    write(tmp_path / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(tmp_path / "alembic" / "env.py", "from alembic import context\n")
    write(tmp_path / "src" / "svc" / "config.py", '''\
        from pydantic import Field
        from pydantic_settings import BaseSettings, SettingsConfigDict


        class AppSettings(BaseSettings):
            model_config = SettingsConfigDict(env_prefix="SVC_")


        class PostgresSettings(AppSettings):
            model_config = SettingsConfigDict(env_prefix="POSTGRES_")

            host: str = "localhost"
            port: int = 5432
            password: str = Field("", validation_alias="PGPASSWORD")
            pool_size: int = 5


        class Legacy(BaseSettings):
            db_url: str = ""
            database_name: str = "app"

            class Config:
                env_prefix = "OLD_"
    ''')
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["env"] == {
        "OLD_DB_URL": "{url}",
        "OLD_DATABASE_NAME": "{database}",
        "POSTGRES_HOST": "{host}",
        "POSTGRES_PORT": "{port}",
        "PGPASSWORD": "{password}",
    }


def test_the_proposal_is_checked_by_the_settings_loader(tmp_path: Path) -> None:
    """What init would write goes through load_settings: a name or a driver the loader
    refuses is refused before anything is written."""
    fastapi_project(tmp_path)
    proposal = propose(tmp_path)
    check_proposal(proposal)  # as proposed: loads
    bad_name = replace(proposal, env=replace(proposal.env, lines=(EnvLine("9LIVES", "{host}", ("x.py:1",)),)))
    with pytest.raises(ConfigError, match="'9LIVES' is not an environment variable name"):
        check_proposal(bad_name)
    bad_driver = replace(proposal, env=replace(proposal.env, url_driver="pg8000"))
    with pytest.raises(ConfigError, match="pg8000"):
        check_proposal(bad_driver)
    code, out, err = cli("init", "--yes", cwd=tmp_path)  # the real one still writes
    assert code == 0, err


def test_a_list_of_generic_urls_is_not_a_database_url(tmp_path: Path) -> None:
    """`BACKEND_CORS_ORIGINS: list[AnyUrl]` (both public FastAPI templates tried have it)
    is no database setting; a PostgresDsn is one whatever it is called, and a generic URL
    type is one when its name says so."""
    write(tmp_path / "alembic.ini", "[alembic]\nscript_location = %(here)s/alembic\n")
    write(tmp_path / "alembic" / "env.py", "from alembic import context\n")
    write(tmp_path / "app" / "config.py", '''\
        from pydantic import AnyHttpUrl, AnyUrl, PostgresDsn
        from pydantic_settings import BaseSettings


        class Settings(BaseSettings):
            BACKEND_CORS_ORIGINS: list[AnyUrl] = []
            FRONTEND_HOST: AnyHttpUrl = "http://localhost:5173"
            PRIMARY: PostgresDsn
            DATABASE_URL: AnyUrl
    ''')
    code, out, err = cli("init", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["env"] == {"PRIMARY": "{url}", "DATABASE_URL": "{url}"}
