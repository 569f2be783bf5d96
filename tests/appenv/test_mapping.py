"""The mapping itself: driver forms, settings, a service's migration environment, and
the .env of `cathouse-branch up`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cathouse_harness.branching.fingerprint import service_sources
from cathouse_harness.config.app_env import AppEnv
from cathouse_harness.config.envfile import read_env_file, write_env_file
from cathouse_harness.config.settings import load_settings
from cathouse_harness.db.urls import endpoint_of, url_for_driver
from cathouse_harness.errors import ConfigError
from cathouse_harness.migrate.environment import driver_scheme, service_command

from tests.cli._support import cli, error_lines
from tests.plugin._support import copy_example

NEON = (
    "postgresql://alex:AbC123@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/dbname"
    "?sslmode=require&channel_binding=require"
)
HOST = "alex:AbC123@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/dbname"


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        ("asyncpg", f"postgresql+asyncpg://{HOST}?ssl=require"),
        ("psycopg", f"postgresql+psycopg://{HOST}?sslmode=require&channel_binding=require"),
        ("psycopg2", f"postgresql+psycopg2://{HOST}?sslmode=require&channel_binding=require"),
        ("libpq", f"postgresql://{HOST}?sslmode=require&channel_binding=require"),
    ],
)
def test_url_for_driver_gives_each_drivers_form(driver: str, expected: str) -> None:
    assert url_for_driver(NEON, driver) == expected
    # and back: asyncpg's `ssl=` is libpq's `sslmode=` again (its channel_binding is gone)
    back = url_for_driver(url_for_driver(NEON, "asyncpg"), driver)
    assert back == expected.replace("&channel_binding=require", "")


def _project(tmp_path: Path, top: str, auth_env: str = "") -> Path:
    project = copy_example(tmp_path / "p")
    path = project / "pyproject.toml"
    text = path.read_text()
    first = text.index("[[tool.cathouse_harness.services]]")
    text = text[:first] + top + "\n\n" + text[first:]
    auth = 'alembic_ini = "auth-service/alembic.ini"\n'
    text = text.replace(auth, auth + auth_env, 1)
    path.write_text(text)
    return project


def test_settings_merge_the_top_table_into_each_services_own(tmp_path: Path) -> None:
    project = _project(
        tmp_path, 'url_driver = "psycopg2"\nenv = { DB_HOST = "{host}", DB_URL = "{url}" }',
        'env = { DB_URL = "{direct_url:libpq}", AUTH_DB = "{database}" }\n',
    )
    settings = load_settings(project)
    assert settings.url_driver == "psycopg2"
    assert settings.env == AppEnv((("DB_HOST", "{host}"), ("DB_URL", "{url}")))
    auth, catalog = settings.service("auth-service"), settings.service("catalog-service")
    assert dict(auth.env.entries) == {"DB_HOST": "{host}", "DB_URL": "{direct_url:libpq}",
                                      "AUTH_DB": "{database}"}
    assert catalog.env == settings.env


@pytest.mark.parametrize(
    ("top", "auth_env", "expected"),
    [
        ('url_driver = "pg8000"', "", "url_driver (from {toml}): 'pg8000' is not one of asyncpg, "
         "psycopg, psycopg2, libpq"),
        ("", 'env = { AUTH = "{hostname}" }\n', "services[auth-service].env.AUTH (from {toml}): "
         "unknown placeholder {{hostname}} (placeholders: {{host}}, {{port}}, {{user}}, "
         "{{password}}, {{database}}, {{sslmode}}, {{sslrootcert}}, {{url}}, {{direct_url}})"),
        ('env = { "A-B" = "{host}" }', "", "env (from {toml}): 'A-B' is not an environment "
         "variable name (use letters, digits and _, not starting with a digit)"),
        ('env = "POSTGRES_SERVER={host}"', "", 'env (from {toml}): must be a table of NAME = '
         '"template" (e.g. POSTGRES_SERVER = "{{host}}" or APP_DATABASE_URL = "{{url:psycopg}}")'),
    ],
)
def test_a_bad_mapping_is_one_line_naming_key_and_file(
    tmp_path: Path, top: str, auth_env: str, expected: str
) -> None:
    project = _project(tmp_path, top, auth_env)
    with pytest.raises(ConfigError) as raised:
        load_settings(project)
    toml = f"{project / 'pyproject.toml'} [tool.cathouse_harness]"
    assert str(raised.value) == expected.format(toml=toml)


def test_a_services_migration_sees_the_names_from_the_direct_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(
        tmp_path, 'env = { DB_HOST = "{host}", DB_URL = "{url}", SHARED = "{user}" }',
        'env = { DB_URL = "{url:psycopg}", AUTH_DB = "{database}", PW = "{password}" }\n',
    )
    settings = load_settings(project)
    monkeypatch.setenv("DB_HOST", "developer.invalid")
    direct = "postgresql://owner:s3cret@127.0.0.9:6543/cathouse_gw1?sslmode=disable"
    with service_command(settings.service("auth-service"), direct):
        seen = {name: os.environ.get(name) for name in ("DB_HOST", "DB_URL", "SHARED", "AUTH_DB", "PW")}
    assert seen == {
        "DB_HOST": "127.0.0.9", "DB_URL": "postgresql+psycopg://owner:s3cret@127.0.0.9:6543/cathouse_gw1"
        "?sslmode=disable", "SHARED": "owner", "AUTH_DB": "cathouse_gw1", "PW": "s3cret",
    }
    assert os.environ["DB_HOST"] == "developer.invalid" and "AUTH_DB" not in os.environ
    catalog = settings.service("catalog-service")
    with service_command(catalog, direct):
        # {url} without a form: the form this service's env.py takes, as DATABASE_URL there
        assert os.environ["DB_URL"] == os.environ["DATABASE_URL"]
        assert os.environ["DB_URL"] == url_for_driver(direct, driver_scheme(service_sources(catalog)))
        assert "AUTH_DB" not in os.environ


def _sourced(env_file: Path, names: list[str]) -> dict[str, str]:
    script = f". ./{env_file.name} && " + " && ".join(f'printf "%s\\0" "${name}"' for name in names)
    out = subprocess.run(["bash", "-c", script], cwd=env_file.parent, check=True,
                         capture_output=True, text=True).stdout
    return dict(zip(names, out.split("\0"), strict=False))


def test_env_file_values_are_the_same_for_the_shell_and_dotenv(tmp_path: Path) -> None:
    values = {"DATABASE_URL": NEON, "PLAIN": "x y $HOME `date` #1 \"q\""}
    env_file = tmp_path / ".env"
    write_env_file(env_file, values, force=False)
    assert read_env_file(env_file) == values
    assert _sourced(env_file, list(values)) == values
    for bad in ("it's", "a\\b", "${HOME}", "two\nlines"):
        with pytest.raises(ConfigError, match="BAD"):
            write_env_file(env_file, {"BAD": bad}, force=False)


def test_up_writes_the_mapped_names_in_the_drivers_form(tmp_path: Path) -> None:
    project = _project(
        tmp_path, 'url_driver = "psycopg"\n'
        'env = { POSTGRES_SERVER = "{host}", POSTGRES_DB = "{database}", APP_URL = "{url:libpq}" }',
    )
    code, out, err = cli("up", "--json", "--name", "appenv-up", cwd=project)
    assert code == 0, err
    try:
        env_file = project / ".env"
        values = read_env_file(env_file)
        assert _sourced(env_file, list(values)) == values
        assert values["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert values["MIGRATION_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert values["APP_URL"].startswith("postgresql://") and "&" in values["APP_URL"]
        assert values["POSTGRES_DB"] == "cathouse"
        assert endpoint_of(values["APP_URL"]).host == values["POSTGRES_SERVER"]
        import psycopg

        with psycopg.connect(values["APP_URL"]) as connection:
            assert connection.execute("SELECT to_regclass('auth.users') IS NOT NULL").fetchone() == (True,)
    finally:
        assert cli("down", cwd=project)[0] == 0


def test_the_cli_says_a_bad_mapping_in_one_line_with_exit_2(tmp_path: Path) -> None:
    project = _project(tmp_path, 'env = { POSTGRES_SERVER = "{server}" }')
    code, out, err = cli("up", "--name", "appenv-bad", cwd=project)
    assert code == 2
    assert error_lines(err) == [
        f"cathouse-branch: error: env.POSTGRES_SERVER (from {project / 'pyproject.toml'} "
        "[tool.cathouse_harness]): unknown placeholder {server} (placeholders: {host}, {port}, "
        "{user}, {password}, {database}, {sslmode}, {sslrootcert}, {url}, {direct_url})"
    ]
    assert "Traceback" not in out + err and not (project / ".env").exists()
