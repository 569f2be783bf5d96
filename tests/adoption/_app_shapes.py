"""Backends whose app reads its own settings, as the public ones we ran do (issue #23).

Each builder writes a project the way its public counterpart is laid out (none of their
code: the shape only), and the file we name in CATHOUSE_CONFIG, outside the project: the
project's own files are never told about the harness.

- `postgres_vars_at_import`: a sync backend in `backend/` whose settings module reads
  POSTGRES_SERVER/PORT/USER/PASSWORD/DB at import (environment first, then a `.env` one
  level above the backend), builds a psycopg URL, and makes its engine at import; the
  conftest imports that engine at import and seeds a first user in a session fixture;
  env.py takes its URL from the same settings. Optionally its migration creates uuid-ossp
  and pgcrypto and uses them, as templates that switched to UUID keys do. Optionally its
  models register their tables in an installed package's registry, which refuses a
  table defined twice (as SQLModel's metadata does), and env.py imports them.
- `nested_settings_own_databases`: an async backend whose settings are nested groups read
  from DATABASE__HOSTNAME/PORT/USERNAME/PASSWORD/DB (environment, then the developer's
  `.env` at the root); its conftest drops and creates `test_db_<worker>` through the
  app's engine, points DATABASE__DB at it, and runs Alembic in process.

In both, the `.env` names `foreign_url`: a database that is not the branch, and that
must see nothing of the run.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class AppProject:
    root: Path  # where pytest runs (its rootdir)
    config: Path  # the file CATHOUSE_CONFIG names, outside the project
    tests: int  # how many of the project's tests pass on the branch
    # directories the developer's environment has on sys.path (an installed package)
    pythonpath: tuple[Path, ...] = ()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


def _parts(url: str) -> dict[str, str]:
    split = urlsplit(url)
    return {
        "host": split.hostname or "",
        "port": str(split.port or 5432),
        "user": unquote(split.username or ""),
        "password": unquote(split.password or ""),
        "database": split.path.lstrip("/"),
    }


_ALEMBIC_INI = """
    [alembic]
    script_location = {location}
    prepend_sys_path = .
"""

_REVISION = '''
    """first revision"""
    import sqlalchemy as sa
    from alembic import op

    revision = "a1b2c3d4e5f6"
    down_revision = None
    branch_labels = None
    depends_on = None


    def upgrade():
    {upgrade}


    def downgrade():
        op.drop_table("users")
'''

_PLAIN_USERS = """
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(255), nullable=False, unique=True),
    )
"""

# what a template that moved to UUID keys writes: the extension first, then a default
# that needs it; pgcrypto for hashing in the database
_EXTENSION_USERS = """
    op.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
    op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(255), nullable=False, unique=True),
        sa.Column("uid", sa.Uuid, nullable=False, server_default=sa.text("uuid_generate_v4()")),
        sa.Column("digest", sa.Text, server_default=sa.text("encode(digest('cat', 'sha256'), 'hex')")),
    )
"""


def _revision(versions: Path, upgrade: str) -> None:
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    text = textwrap.dedent(_REVISION).lstrip().replace("{upgrade}", body)
    versions.mkdir(parents=True, exist_ok=True)
    (versions / "a1b2c3d4e5f6_first.py").write_text(text, encoding="utf-8")


def _config(path: Path, names: dict[str, str], alembic_ini: str) -> Path:
    lines = ["[tool.cathouse_harness]", "", "[tool.cathouse_harness.env]"]
    lines += [f'{name} = "{{{placeholder}}}"' for name, placeholder in names.items()]
    lines += ["", "[[tool.cathouse_harness.services]]", 'name = "app"', 'schema = "public"',
              f'alembic_ini = "{alembic_ini}"', "pool_size = 2", "max_overflow = 1", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --- a sync backend reading POSTGRES_* at import -------------------------------------

_POSTGRES_SETTINGS = """
    import os
    from pathlib import Path

    from dotenv import dotenv_values
    from sqlalchemy.engine import URL

    # the repository's .env, one level above the backend, read from the working directory
    # as a relative env_file is; the environment wins over it
    _FILE = dotenv_values(Path("..") / ".env")


    def _get(name, default=None):
        value = os.environ.get(name) or _FILE.get(name) or default
        if value is None:
            raise RuntimeError(f"{name} is not set")
        return value


    class Settings:
        def __init__(self):
            self.POSTGRES_SERVER = _get("POSTGRES_SERVER")
            self.POSTGRES_PORT = int(_get("POSTGRES_PORT", "5432"))
            self.POSTGRES_USER = _get("POSTGRES_USER")
            self.POSTGRES_PASSWORD = _get("POSTGRES_PASSWORD", "")
            self.POSTGRES_DB = _get("POSTGRES_DB", "")
            self.FIRST_SUPERUSER = _get("FIRST_SUPERUSER", "admin@example.com")

        @property
        def SQLALCHEMY_DATABASE_URI(self):
            return URL.create(
                "postgresql+psycopg",
                username=self.POSTGRES_USER,
                password=self.POSTGRES_PASSWORD,
                host=self.POSTGRES_SERVER,
                port=self.POSTGRES_PORT,
                database=self.POSTGRES_DB,
            )


    settings = Settings()
"""

_SYNC_DB = """
    from sqlalchemy import create_engine

    from app.core.config import settings

    engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
"""

_SYNC_ENV_PY = """
    from alembic import context
    from sqlalchemy import create_engine, pool

    from app.core.config import settings

    config = context.config


    def get_url():
        return settings.SQLALCHEMY_DATABASE_URI.render_as_string(hide_password=False)


    connectable = create_engine(get_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""

_SYNC_CONFTEST = """
    import pytest
    from sqlalchemy import text

    from app.core.config import settings
    from app.core.db import engine


    @pytest.fixture(scope="session", autouse=True)
    def db():
        with engine.begin() as connection:
            found = connection.execute(
                text("SELECT 1 FROM users WHERE email = :e"), {"e": settings.FIRST_SUPERUSER}
            ).first()
            if found is None:
                connection.execute(
                    text("INSERT INTO users (email) VALUES (:e)"), {"e": settings.FIRST_SUPERUSER}
                )
        yield engine
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM users"))
"""

_SYNC_TESTS = """
    from sqlalchemy import text

    from app.core.config import settings


    def test_first_superuser_exists(db):
        with db.connect() as connection:
            rows = connection.execute(text("SELECT email FROM users")).scalars().all()
        assert settings.FIRST_SUPERUSER in rows


    def test_create_user(db):
        with db.begin() as connection:
            connection.execute(text("INSERT INTO users (email) VALUES ('cat@example.com')"))
            count = connection.execute(
                text("SELECT count(*) FROM users WHERE email = 'cat@example.com'")
            ).scalar_one()
        assert count == 1
"""

_EXTENSION_TEST = """
    from sqlalchemy import text


    def test_defaults_from_the_extensions(db):
        with db.begin() as connection:
            row = connection.execute(
                text("INSERT INTO users (email) VALUES ('uuid@example.com') RETURNING uid, digest")
            ).one()
        assert row.uid.version == 4
        assert len(row.digest) == 64
"""

# an installed package with a registry for the whole process, as SQLModel's metadata is
_TABLE_REGISTRY = """
    TABLES = set()


    def define(name):
        if name in TABLES:
            raise RuntimeError(f"Table {name!r} is already defined for this registry")
        TABLES.add(name)
"""

_REGISTERED_MODELS = """
    import tablereg

    tablereg.define("users")
"""

POSTGRES_NAMES = {
    "POSTGRES_SERVER": "host",
    "POSTGRES_PORT": "port",
    "POSTGRES_USER": "user",
    "POSTGRES_PASSWORD": "password",
    "POSTGRES_DB": "database",
}


def postgres_vars_at_import(
    base: Path, foreign_url: str, *, extensions: bool = False, registry: str | None = None
) -> AppProject:
    """`registry` (a token that makes the migrations' fingerprint, and so the template,
    this project's own): the models register in an installed registry, and both env.py
    and the conftest import them."""
    repository = base / "project"
    backend = repository / "backend"
    _write(backend / "pyproject.toml", '[project]\nname = "app"\nversion = "0.1.0"\n')
    _write(backend / "alembic.ini", _ALEMBIC_INI.format(location="app/alembic"))
    _write(backend / "app" / "__init__.py", "")
    _write(backend / "app" / "core" / "__init__.py", "")
    _write(backend / "app" / "core" / "config.py", _POSTGRES_SETTINGS)
    _write(backend / "app" / "core" / "db.py", _SYNC_DB)
    env_py, conftest, pythonpath = _SYNC_ENV_PY, _SYNC_CONFTEST, ()
    if registry is not None:
        installed = base / "site-packages"
        _write(installed / "tablereg" / "__init__.py", _TABLE_REGISTRY)
        _write(backend / "app" / "models.py", _REGISTERED_MODELS)
        env_py = f"import app.models  # noqa: F401  (build {registry})\n" + textwrap.dedent(env_py)
        conftest = "import app.models  # noqa: F401\n" + textwrap.dedent(conftest)
        pythonpath = (installed,)
    _write(backend / "app" / "alembic" / "env.py", env_py)
    _revision(backend / "app" / "alembic" / "versions", _EXTENSION_USERS if extensions else _PLAIN_USERS)
    _write(backend / "tests" / "__init__.py", "")
    _write(backend / "tests" / "conftest.py", conftest)
    _write(backend / "tests" / "test_users.py", _SYNC_TESTS)
    if extensions:
        _write(backend / "tests" / "test_extensions.py", _EXTENSION_TEST)
    parts = _parts(foreign_url)
    _write(repository / ".env", "".join(f"{name}={parts[p]}\n" for name, p in POSTGRES_NAMES.items()))
    config = _config(base / "elsewhere" / "cathouse.toml", POSTGRES_NAMES, "alembic.ini")
    return AppProject(backend, config, tests=3 if extensions else 2, pythonpath=pythonpath)


# --- an async backend with nested settings and databases of its own -------------------

_NESTED_SETTINGS = """
    import os
    from dataclasses import dataclass
    from functools import lru_cache
    from pathlib import Path

    from dotenv import dotenv_values
    from sqlalchemy.engine import URL

    PROJECT_DIR = Path(__file__).parent.parent.parent


    @dataclass
    class Database:
        hostname: str = "postgres"
        username: str = "postgres"
        password: str = "passwd-change-me"
        port: int = 5432
        db: str = "postgres"


    class Settings:
        def __init__(self):
            # nested groups: DATABASE__<FIELD>, case-insensitive; environment over .env
            found = {k.upper(): v for k, v in dotenv_values(PROJECT_DIR / ".env").items() if v}
            found.update({k.upper(): v for k, v in os.environ.items() if v})
            fields = {}
            for field in ("hostname", "username", "password", "port", "db"):
                value = found.get(f"DATABASE__{field.upper()}")
                if value is not None:
                    fields[field] = int(value) if field == "port" else value
            self.database = Database(**fields)

        @property
        def sqlalchemy_database_uri(self):
            return URL.create(
                "postgresql+asyncpg",
                username=self.database.username,
                password=self.database.password,
                host=self.database.hostname,
                port=self.database.port,
                database=self.database.db,
            )


    @lru_cache(maxsize=1)
    def get_settings():
        return Settings()
"""

_ASYNC_SESSION = """
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.core.config import get_settings


    def new_async_engine(uri):
        return create_async_engine(uri, pool_pre_ping=True, pool_size=2, max_overflow=1)


    _ASYNC_ENGINE = new_async_engine(get_settings().sqlalchemy_database_uri)
"""

_ASYNC_ENV_PY = """
    import asyncio

    from alembic import context
    from sqlalchemy import pool
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.core.config import get_settings

    config = context.config


    def get_database_uri():
        return get_settings().sqlalchemy_database_uri.render_as_string(hide_password=False)


    def do_run_migrations(connection):
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


    async def run_async_migrations():
        engine = create_async_engine(get_database_uri(), poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
        await engine.dispose()


    asyncio.run(run_async_migrations())
"""

_OWN_DATABASES_CONFTEST = """
    import asyncio
    import os

    import alembic.command
    import alembic.config
    import pytest
    import sqlalchemy

    from app.core import database_session
    from app.core.config import PROJECT_DIR, get_settings

    _FIRST_URI = []


    @pytest.fixture(scope="session")
    def first_database_uri(engine):
        return _FIRST_URI[0]


    @pytest.fixture(scope="session")
    def loop():
        loop = asyncio.new_event_loop()
        yield loop
        loop.close()


    @pytest.fixture(scope="session", autouse=True)
    def engine(loop):
        worker_name = os.getenv("PYTEST_XDIST_WORKER", "gw0")
        test_db_name = f"test_db_{worker_name}"

        async def recreate():
            conn = await database_session._ASYNC_ENGINE.connect()
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {test_db_name}"))
            await conn.execute(sqlalchemy.text(f"CREATE DATABASE {test_db_name}"))
            await conn.close()
            await database_session._ASYNC_ENGINE.dispose()

        loop.run_until_complete(recreate())
        # the database the settings named before the switch, to show the tests left it alone
        _FIRST_URI.append(get_settings().sqlalchemy_database_uri)
        patch = pytest.MonkeyPatch()
        patch.setenv("DATABASE__DB", test_db_name)
        get_settings.cache_clear()
        engine = database_session.new_async_engine(get_settings().sqlalchemy_database_uri)
        patch.setattr(database_session, "_ASYNC_ENGINE", engine)

        def alembic_upgrade():
            config = alembic.config.Config(PROJECT_DIR / "alembic.ini")
            alembic.command.upgrade(config, "head")

        # env.py runs its own event loop: in a thread, as the project does
        loop.run_until_complete(loop.run_in_executor(None, alembic_upgrade))
        yield engine
        loop.run_until_complete(engine.dispose())
        patch.undo()
"""

_OWN_DATABASES_TESTS = """
    import os

    import pytest
    import sqlalchemy

    from app.core import database_session
    from app.core.config import get_settings


    def run(loop, engine, sql, **params):
        async def go():
            async with engine.begin() as connection:
                result = await connection.execute(sqlalchemy.text(sql), params)
                return result.all() if result.returns_rows else None

        return loop.run_until_complete(go())


    @pytest.mark.parametrize("n", range(3))
    def test_register_user(loop, engine, first_database_uri, n):
        assert get_settings().database.db == "test_db_" + os.getenv("PYTEST_XDIST_WORKER", "gw0")
        email = f"user{n}@example.com"
        run(loop, engine, "INSERT INTO users (email) VALUES (:e)", e=email)
        count = "SELECT count(*) FROM users WHERE email = :e"
        assert run(loop, engine, count, e=email) == [(1,)]
        first = database_session.new_async_engine(first_database_uri)
        try:
            assert run(loop, first, count, e=email) == [(0,)]
        finally:
            loop.run_until_complete(first.dispose())
"""

NESTED_NAMES = {
    "DATABASE__HOSTNAME": "host",
    "DATABASE__PORT": "port",
    "DATABASE__USERNAME": "user",
    "DATABASE__PASSWORD": "password",
    "DATABASE__DB": "database",
}


def nested_settings_own_databases(base: Path, foreign_url: str) -> AppProject:
    root = base / "project"
    _write(root / "pyproject.toml", '[project]\nname = "app"\nversion = "0.1.0-alpha"\n')
    _write(root / "alembic.ini", _ALEMBIC_INI.format(location="alembic"))
    _write(root / "app" / "__init__.py", "")
    _write(root / "app" / "core" / "__init__.py", "")
    _write(root / "app" / "core" / "config.py", _NESTED_SETTINGS)
    _write(root / "app" / "core" / "database_session.py", _ASYNC_SESSION)
    _write(root / "alembic" / "env.py", _ASYNC_ENV_PY)
    _revision(root / "alembic" / "versions", _PLAIN_USERS)
    _write(root / "app" / "conftest.py", _OWN_DATABASES_CONFTEST)
    _write(root / "app" / "tests" / "__init__.py", "")
    _write(root / "app" / "tests" / "test_register.py", _OWN_DATABASES_TESTS)
    parts = _parts(foreign_url)
    # the developer's copy of .env.example, pointing at their own server
    _write(root / ".env", "".join(f"{name}={parts[p]}\n" for name, p in NESTED_NAMES.items()))
    config = _config(base / "elsewhere" / "cathouse.toml", NESTED_NAMES, "alembic.ini")
    return AppProject(root, config, tests=3)
