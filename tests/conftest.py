"""Shared fixtures: real PostgreSQL (and later the local Neon server) for the harness's tests.

Everything runs under a throwaway CATHOUSE_HARNESS_HOME so a developer's own embedded
default (and their branches) are never touched by the test suite. Each xdist worker gets
its own home and so its own cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psycopg
import psycopg.sql
import pytest
from cathouse_harness.local.data.scram import scram_verifier
from cathouse_harness.local.pg_binaries import resolve_install, resolve_os_user
from cathouse_harness.support.env import overridden
from cathouse_harness.support.sync import LoopThread

from tests._cluster import Cluster, cluster_root

TEST_ROLE = "harness_test"

# Read before the session fixture hides it: only tests marked `neon` may use real Neon.
REAL_NEON_API_KEY = os.environ.get("NEON_API_KEY") or None
REAL_NEON_PROJECT_ID = os.environ.get("NEON_PROJECT_ID") or None

pytest_plugins = ["pytester"]


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has made the factory
def pytest_configure(config: pytest.Config) -> None:
    """Where PYTHONDONTWRITEBYTECODE is set (this project's machines, some CI images), every
    Python the suite starts (hundreds: plugin runs in pytester, CLI calls, watchdogs) would
    compile our sources, and pytest would assert-rewrite every plugin it loads, again from
    source: ~0.3 s of CPU each. They share one bytecode cache instead, under the run's
    basetemp (rotated by pytest like the rest of it), so nothing is written beside any
    source. The price: the cache hides the installed packages' own .pyc files, so each
    run compiles what it imports once (measured: a net 10% less CPU on plugin-run tests).
    Set once in the process that starts the others; xdist workers inherit it."""
    if hasattr(config, "workerinput") or not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    cache = factory.getbasetemp() / "pycache"
    cache.mkdir(exist_ok=True)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    del os.environ["PYTHONDONTWRITEBYTECODE"]


@pytest.fixture(scope="session", autouse=True)
def harness_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("harness-home")
    # The harness's own tests never reach real Neon by accident; `neon`-marked tests read
    # the key from CATHOUSE_TEST_NEON_API_KEY instead.
    # Endpoints by addresses of their own wherever the suite runs: names mode (where
    # `*.localhost` resolves) would let one of the parallel servers take 127.0.0.1:5432;
    # tests/local/test_names_mode.py forces names on a router address of its own.
    hosts = os.environ.get("CATHOUSE_LOCAL_HOSTS") or "addresses"
    # The wheel's PostgreSQL wherever the suite runs, whatever else is installed (a
    # user's default, auto, takes a system one): the same server for every result. The
    # tests of system PostgreSQL name theirs; CATHOUSE_POSTGRES_BIN=system runs it all there.
    postgres = os.environ.get("CATHOUSE_POSTGRES_BIN") or "wheel"
    isolated = {
        "CATHOUSE_HARNESS_HOME": str(home),
        "NEON_API_KEY": None,
        "CATHOUSE_LOCAL_HOSTS": hosts,
        "CATHOUSE_POSTGRES_BIN": postgres,
        # No spare branch behind each session: the suite's tests count what runs leave
        # (tests/plugin/test_spares.py turns it on for its own)
        "CATHOUSE_SPARE": os.environ.get("CATHOUSE_SPARE") or "false",
    }
    with overridden(isolated):
        yield home
        # pytester runs start the embedded default as a daemon under this home; stop it.
        from cathouse_harness.local.compute.layout import memory_bases
        from cathouse_harness.local.server import stop_local_server

        try:
            stop_local_server(home)
        except Exception as exc:  # a stuck server must not hide the test results
            print(f"could not stop the test suite's local server: {exc}")
        for directory in memory_bases(home):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def harness_loop() -> Iterator[LoopThread]:
    loop = LoopThread("tests-loop")
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def pg_cluster(harness_home: Path) -> Iterator[Cluster]:
    """The session's plain PostgreSQL (the wheel's, in memory, on 127.0.0.1) for tests
    that need a database and no local server."""
    home = harness_home / "plain-postgres"
    user = resolve_os_user()
    cluster = Cluster(cluster_root(home, "memory", user), storage="memory", user=user,
                      install=resolve_install(user), home=home)
    cluster.start_blocking()
    yield cluster
    cluster.stop_blocking()
    cluster.release()
    shutil.rmtree(cluster.paths.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_cluster: Cluster) -> str:
    """Superuser DSN (unix socket) of the session's PostgreSQL."""
    return pg_cluster.superuser_dsn()


@pytest.fixture(scope="session")
def test_role_password(pg_admin_dsn: str) -> str:
    password = "pw-" + secrets.token_urlsafe(12)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            psycopg.sql.Identifier(TEST_ROLE), psycopg.sql.Literal(scram_verifier(password))))
    return password


def tcp_port(dsn: str) -> int:
    port = parse_qs(urlsplit(dsn).query).get("port", ["5432"])[0]
    return int(port)


def create_database(admin_dsn: str, name: str, owner: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Identifier(owner)))


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))


@pytest.fixture
def fresh_database_url(pg_admin_dsn: str, test_role_password: str) -> Iterator[str]:
    """A new empty database owned by a password role: `postgresql://…@127.0.0.1:port/db`."""
    name = f"t_{secrets.token_hex(6)}"
    create_database(pg_admin_dsn, name, TEST_ROLE)
    port = tcp_port(pg_admin_dsn)
    yield f"postgresql://{TEST_ROLE}:{quote(test_role_password, safe='')}@127.0.0.1:{port}/{name}"
    drop_database(pg_admin_dsn, name)
