"""The whole shape of #28 part 5: a core history plus two plugin histories in one version
table (three heads, a plugin joined by `version_locations`), the core creating an ICU
collation. On Debian's PostgreSQL, which has ICU as Neon does, it runs through the plugin
at -n 0 and -n 2 and through `init --yes` then `up` with no edit; on the wheel's, built
without ICU, it stops with the one line saying what is missing and how to get it.

The plugin's runs on the system PostgreSQL share one home (one server, one cluster, one
template per fingerprint) for the whole module: a server started per test would cost more
than the tests themselves. `init` + `up` takes a home of its own, since init proposes the
database and role alembic.ini's URL names and a home keeps its first project's."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.local.pg_choice import system_bin_dirs

from tests.adoption import _plugin_host as host
from tests.adoption.conftest import run_plugin, tables_of

# a title of this test's own, found again in capitals: the ICU collation ignores case
# (the tests of one run share the branch, and so the table)
COLLATION_CHECK = (
    "title = uuid.uuid4().hex\n"
    "        connection.execute('INSERT INTO app.core_items (title) VALUES (%s)', (title,))\n"
    "        found = connection.execute('SELECT count(*) FROM app.core_items WHERE title = %s',"
    " (title.upper(),)).fetchone()\n"
    "        assert found[0] == 1"
)


def _system_bin() -> str:
    dirs = system_bin_dirs()
    if not dirs:
        pytest.skip("no system PostgreSQL under /usr/lib/postgresql/<major>/bin "
                    "(apt-get install postgresql; .ci/run installs it)")
    return str(dirs[0])


@contextmanager
def _stopped_after(home: Path) -> Iterator[Path]:
    """`home`, whose server (if one started) is stopped and its cluster removed after."""
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.server import stop_local_server

    try:
        yield home
    finally:
        try:
            stop_local_server(home)
        finally:
            for path in memory_bases(home):
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def system_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A home whose server runs Debian's PostgreSQL, and that PostgreSQL's bin directory;
    the server is stopped when the module's tests are done."""
    bin_dir = _system_bin()
    with _stopped_after(tmp_path_factory.mktemp("icu-home")) as home:
        yield home, bin_dir


@pytest.fixture
def on_system_postgres(system_home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    home, bin_dir = system_home
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_POSTGRES_BIN", bin_dir)


@pytest.mark.usefixtures("on_system_postgres")
@pytest.mark.parametrize("workers", ["0", "2"])
def test_plugin_migrates_every_head_and_the_collation_on_system_postgres(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    host.build(pytester.path, target='"heads"', icu=True)
    # under -n 2 two tests, so that each worker's own database is checked
    test = host.plugin_test(COLLATION_CHECK)
    pytester.makepyfile(test_host_0=test, test_host_1=test)
    result = run_plugin(pytester, monkeypatch, f"icu-host-n{workers}", workers)
    result.assert_outcomes(passed=2)


def test_init_yes_then_up_with_no_edit_on_system_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a home of its own, as init's note says: init takes the database and role from
    # alembic.ini's URL (server, nobody), and a home keeps its first project's names
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_POSTGRES_BIN", _system_bin())
    with _stopped_after(home):
        _init_yes_then_up(tmp_path)


def _init_yes_then_up(tmp_path: Path) -> None:
    root = host.build(tmp_path / "server", icu=True)
    # a project that has never heard of the harness
    (root / "pyproject.toml").write_text('[project]\nname = "plugin-host"\nversion = "0"\n')
    out, err = io.StringIO(), io.StringIO()
    args = ["--project-dir", str(root)]
    assert cli_main(["init", *args, "--yes"], out=out, err=err) == 0, err.getvalue()
    written = (root / "pyproject.toml").read_text()
    assert 'target = "heads"' in written and written.count("[[tool.cathouse_harness.services]]") == 1

    out = io.StringIO()
    code = cli_main(["up", "--json", "--show-secrets", "--name", "icu-host-up", *args], out=out, err=err)
    assert code == 0, err.getvalue()
    try:
        url = json.loads(out.getvalue())["migration_database_url"]
        assert tables_of(url) >= host.TABLES
        with psycopg.connect(url) as connection:
            versions = connection.execute("SELECT version_num FROM app.alembic_version").fetchall()
            connection.execute("INSERT INTO app.core_items (title) VALUES ('Tom')")
            # the ICU collation ignores case
            same = connection.execute("SELECT count(*) FROM app.core_items WHERE title = 'TOM'").fetchone()
        assert sorted(row[0] for row in versions) == list(host.HEADS)
        assert same is not None and same[0] == 1
    finally:
        assert cli_main(["down", *args], out=io.StringIO(), err=err) == 0, err.getvalue()


def test_on_the_wheel_the_collation_is_one_line(tmp_path: Path) -> None:
    # the suite's own home: its server runs the wheel's PostgreSQL (tests/_pins.py)
    root = host.build(tmp_path / "server", target='"heads"', icu=True)
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["up", "--name", "icu-host-wheel", "--project-dir", str(root)], out=out, err=err)
    assert code == 1, err.getvalue()
    lines = [line for line in err.getvalue().splitlines() if "ICU" in line]
    assert len(lines) == 1, err.getvalue()
    assert "ICU collations work on Neon" in lines[0] and "built without ICU" in lines[0]
    assert "apt-get install postgresql" in lines[0] and "postgres_bin" in lines[0]
    assert "revision c2c2c2c2c2c2" in lines[0] and "Traceback" not in err.getvalue()
