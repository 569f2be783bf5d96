"""Item 10: PgBouncer's environment, the .env write, and doctor on a malformed .env."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cathouse_harness.support.safe_paths import write_private

from tests._cluster import Cluster
from tests.security._support import minimal_project, plugin_env

SECRET_PASSWORD = "pw-doctor-SECRET-1f2e3d"


def test_pgbouncer_gets_none_of_the_servers_environment(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cathouse_harness.local.data.pgbouncer import PgBouncer, find_pgbouncer
    from cathouse_harness.local.pg_binaries import resolve_os_user

    binary = find_pgbouncer()
    if binary is None:
        pytest.skip("pgbouncer is not installed")
    monkeypatch.setenv("NEON_API_KEY", "napi-must-not-travel")
    monkeypatch.setenv("CATHOUSE_PG_URL", "postgresql://postgres:pw@127.0.0.1/postgres")
    directory = pg_cluster.paths.root / "pgbouncer-env-test"
    bouncer = PgBouncer(
        binary, directory, user=resolve_os_user(), pg_host="127.0.0.1", pg_port=1, socket_dir=directory,
    )

    async def started_environment() -> bytes:
        await bouncer.start()
        try:
            assert bouncer._process is not None
            return Path(f"/proc/{bouncer._process.pid}/environ").read_bytes()
        finally:
            await bouncer.stop()

    environment = asyncio.run(started_environment())
    names = {entry.split(b"=", 1)[0] for entry in environment.split(b"\0") if entry}
    assert names <= {b"PATH", b"LANG", b"LC_ALL", b"HOME"}, names


def test_private_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("the victim's file\n")
    target = tmp_path / "out"
    target.symlink_to(victim)  # a link where the file goes: it is replaced, not followed

    write_private(target, "secret=1\n")

    assert victim.read_text() == "the victim's file\n"
    assert not target.is_symlink() and target.read_text() == "secret=1\n"
    assert target.stat().st_mode & 0o777 == 0o600


def test_env_file_write_does_not_follow_a_planted_temporary_link(tmp_path: Path) -> None:
    from cathouse_harness.config.envfile import write_env_file

    victim = tmp_path / "victim"
    victim.write_text("the victim's file\n")
    env_file = tmp_path / ".env"
    (tmp_path / f"..env.tmp-{os.getpid()}").symlink_to(victim)  # the name it used to take

    write_env_file(env_file, {"DATABASE_URL": "postgresql://u:pw@h/db"}, force=True)

    assert victim.read_text() == "the victim's file\n"


def test_doctor_on_a_malformed_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    project = minimal_project(tmp_path / "project", {})
    env_file = project / ".env"
    env_file.write_text(
        f"DATABASE_URL=postgresql+asyncpg://cathouse_owner:{SECRET_PASSWORD}@127.0.0.1:12ab/cathouse\n"
        f"MIGRATION_DATABASE_URL=postgresql://cathouse_owner:{SECRET_PASSWORD}@127.0.0.1:5432/cathouse\n"
    )

    done = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "doctor", "--quiet"], cwd=project,
        env=plugin_env(Path(os.environ["CATHOUSE_HARNESS_HOME"])), capture_output=True, text=True,
        timeout=120,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and SECRET_PASSWORD not in output
    failing = [line for line in output.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and "DATABASE_URL" in failing[0] and "12ab" in failing[0], output
