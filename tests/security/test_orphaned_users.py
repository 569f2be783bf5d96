"""Per-home OS users whose home is gone are deleted by the leftovers sweep (#24/#26):
a home removed without a clean stop of its server (a test's temporary directory, a
killed server) left its `cathouse-pg-<hash>` user for good, and system uids are few.
One whose home exists, or that still runs a process, is kept."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cathouse_harness.cleanup.leftovers import clean_leftovers
from cathouse_harness.local import locations
from cathouse_harness.local.compute.users import home_os_user, home_user_name, remove_home_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a home has an OS user of its own only when run as root")


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    made = {}
    for kind in ("gone", "kept", "busy"):
        made[kind] = home = tmp_path / kind
        home.mkdir(mode=0o700)
        home_os_user(home)
    try:
        yield made
    finally:
        for home in made.values():
            home.mkdir(exist_ok=True)  # remove_home_user finds the user by its home's name
            remove_home_user(home)


def test_a_user_whose_home_is_gone_is_deleted_one_that_is_used_is_kept(
        homes: dict[str, Path], tmp_path: Path) -> None:
    busy_user = pwd.getpwnam(home_user_name(homes["busy"]))
    sleeper = subprocess.Popen(["sleep", "300"], user=busy_user.pw_uid, group=busy_user.pw_gid)
    try:
        # a removal stopped part way: the base's lease and home file went first
        half_removed = locations.per_user_dir(locations.VAR_TMP_DIR, switch=True) / \
            f"{locations.short_hash(str(homes['gone']))}-compute"
        (half_removed / "instances").mkdir(parents=True)
        gone_user = pwd.getpwnam(home_user_name(homes["gone"]))
        for path in (half_removed, half_removed / "instances"):
            os.chown(path, gone_user.pw_uid, gone_user.pw_gid)
        shutil.rmtree(homes["gone"])
        shutil.rmtree(homes["busy"])
        gone = home_user_name(homes["gone"])
        sweeper = tmp_path / "sweeper"
        sweeper.mkdir()
        done = clean_leftovers(sweeper)
        # every server start runs this sweep, so another xdist worker's may have got there
        # first: what holds either way is that the user and its half-removed base are gone
        assert not _exists(gone) and not half_removed.exists()
        assert [line for line in done if gone in line] in (
            [], [f"deleted the OS user {gone}: its home {homes['gone']} is gone"])
        assert _exists(home_user_name(homes["kept"]))
        assert _exists(busy_user.pw_name)
        assert not any(busy_user.pw_name in line for line in done)
    finally:
        sleeper.kill()
        sleeper.wait()
