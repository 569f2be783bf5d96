"""cathouse-branch as a user runs it, on the embedded default."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cathouse_harness.cleanup.gc import candidates as gc_candidates
from cathouse_harness.config.envfile import read_env_file
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import current_revisions, head_revisions
from dotenv import dotenv_values

from tests.cli._support import cli, error_lines
from tests.plugin._support import copy_example


def sourced(env_file: Path) -> dict[str, str]:
    """What `set -a; . ./.env` exports, for the names the file holds."""
    out = subprocess.run(["bash", "-c", "set -a && . ./.env && env -0"], cwd=env_file.parent,
                         env={"PATH": os.environ["PATH"]}, check=True, capture_output=True).stdout
    exported = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {name: exported[name] for name in read_env_file(env_file)}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def test_up_json_env_file_and_down(project: Path) -> None:
    code, out, err = cli("up", "--json", "--name", "cli-up", cwd=project)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"branch_id", "name", "database_url", "migration_database_url"}
    assert result["name"] == "harness/dev/cli-up"
    assert result["database_url"].startswith("postgresql+asyncpg://") and ":***@" in result["database_url"]
    env_file = project / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["CATHOUSE_BRANCH_ID"] == result["branch_id"]
    # a shell that sources it and python-dotenv read the same values, the URLs' `&` included
    assert "&" in values["MIGRATION_DATABASE_URL"]
    assert sourced(env_file) == dotenv_values(env_file) == values
    settings = load_settings(project)
    heads = head_revisions(settings)
    current = current_revisions(settings, values["MIGRATION_DATABASE_URL"])
    assert {name: (rev,) for name, rev in current.items()} == heads
    password = re.search(r"://[^:]+:([^@]+)@", values["MIGRATION_DATABASE_URL"])
    assert password and password.group(1) not in out + err

    code, out, err = cli("list", "--json", cwd=project)
    assert code == 0
    assert result["branch_id"] in {b["id"] for b in json.loads(out)["branches"]}
    code, out, err = cli("list", cwd=project)  # a person's table: a header, then a row each
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "KIND", "EXPIRES", "NAME"]
    assert any(row.split()[0] == result["branch_id"] and row.endswith(result["name"]) for row in rows)

    code, out, err = cli("up", "--json", "--name", "cli-up", cwd=project)
    assert code == 0 and json.loads(out)["created"] is False, err

    code, out, err = cli("down", cwd=project)
    assert code == 0, err
    assert not env_file.exists()
    code, out, _ = cli("list", "--json", cwd=project)
    assert result["branch_id"] not in {b["id"] for b in json.loads(out)["branches"]}


def test_commands_take_the_name_given_to_up(project: Path) -> None:
    """`up --name "cli short"` makes harness/dev/cli-short; every command that takes a
    branch accepts what the user typed, the full name and the id (issue 13 item 7)."""
    code, out, err = cli("up", "--json", "--name", "cli short", cwd=project)
    assert code == 0, err
    made = json.loads(out)
    assert made["name"] == "harness/dev/cli-short"
    branch_id = made["branch_id"]

    code, out, err = cli("reset", "--json", "cli short", cwd=project)
    assert code == 0, err
    assert json.loads(out)["branch_id"] == branch_id
    for given in ("cli short", "cli-short", "harness/dev/cli-short", branch_id):
        code, out, err = cli("url", "--json", given, cwd=project)
        assert code == 0, f"{given}: {err}"
        assert json.loads(out)["branch_id"] == branch_id, given

    code, out, err = cli("down", "--json", "cli short", cwd=project)
    assert code == 0, err
    assert json.loads(out)["deleted"] == branch_id
    assert not (project / ".env").exists()  # it named the branch just deleted

    code, out, err = cli("down", "cli short", cwd=project)
    assert code == 2, err
    assert len(error_lines(err)) == 1
    assert "'harness/dev/cli-short' or 'cli short'" in err and "cathouse-branch list" in err


def test_url_asyncpg_says_where_its_ca_is(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asyncpg form cannot carry `sslrootcert`: `url --asyncpg` names PGSSLROOTCERT on
    stderr (and in --json), and with it set the printed URL connects; without it asyncpg
    refuses the server rather than trusting it."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    code, out, err = cli("up", "--json", "--name", "cli-asyncpg", cwd=project)
    assert code == 0, err
    code, out, err = cli("url", "--asyncpg", "cli-asyncpg", cwd=project)
    assert code == 0, err
    url = out.strip()
    assert url.startswith("postgresql+asyncpg://") and "sslrootcert" not in url
    found = re.search(r"export PGSSLROOTCERT=(\S+)", err)
    assert found, err
    code, out, err = cli("url", "--asyncpg", "--json", "cli-asyncpg", cwd=project)
    assert code == 0 and json.loads(out)["env"] == {"PGSSLROOTCERT": found.group(1)}, err

    async def select_one() -> int:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("select 1"))).scalar_one())
        finally:
            await engine.dispose()

    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.setenv("HOME", str(project))  # no ~/.postgresql/root.crt to fall back on
    with pytest.raises(Exception, match="(?i)certificate|ssl"):
        asyncio.run(select_one())
    monkeypatch.setenv("PGSSLROOTCERT", found.group(1))
    assert asyncio.run(select_one()) == 1
    assert cli("down", "cli-asyncpg", cwd=project)[0] == 0


def test_up_refuses_a_foreign_env_file(project: Path) -> None:
    (project / ".env").write_text("DATABASE_URL=postgresql://me:secret@prod.example/db\n")
    code, out, err = cli("up", "--name", "cli-foreign", cwd=project)
    assert code == 2
    assert err.count("\n") == 1 and "was not written by cathouse-branch" in err and "--force" in err
    assert "secret" not in err
    code, out, _ = cli("list", "--json", cwd=project)
    assert "harness/dev/cli-foreign" not in {b["name"] for b in json.loads(out)["branches"]}


def test_doctor_good_config_exits_0(project: Path) -> None:
    code, out, err = cli("doctor", cwd=project)
    assert code == 0, out + err
    assert "[ok  ] pool budget: 10 of 10 connections" in out


def test_doctor_pools_over_the_limit_exit_2_with_one_line(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    proxy = 'name = "proxy-service"\nread_only = true\npool_size = '
    text = text.replace(proxy + "1", proxy + "2")
    pyproject.write_text(text)
    code, out, err = cli("doctor", cwd=project)
    assert code == 2
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "pools need 11 connections" in lines[0] and "connection_limit is 10" in lines[0]
    for service in ("auth-service 3", "catalog-service 3", "installation-service 3", "proxy-service 2"):
        assert service in lines[0]


@pytest.mark.parametrize(
    "args",
    [("frobnicate",), ("up", "--ttl", "forever"), ("up", "--ttl", "40d"), ("gc", "--run")],
)
def test_bad_usage_is_one_line_exit_2(project: Path, args: tuple[str, ...]) -> None:
    code, out, err = cli(*args, cwd=project)
    assert code == 2
    assert len(error_lines(err)) == 1 and err.startswith("cathouse-branch: error:")
    assert "Traceback" not in err


def test_down_refuses_the_default_branch(project: Path) -> None:
    code, out, err = cli("down", "main", cwd=project)
    assert code == 2
    assert len(error_lines(err)) == 1 and "default branch" in error_lines(err)[0]


def test_migrate_without_url_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATION_DATABASE_URL", raising=False)
    code, out, err = cli("migrate", cwd=project)
    assert code == 2 and len(error_lines(err)) == 1 and "MIGRATION_DATABASE_URL" in err


def test_gc_dry_run_lists_and_touches_nothing(project: Path) -> None:
    code, out, err = cli("up", "--json", "--name", "cli-gc", "--ttl", "1h", cwd=project)
    assert code == 0, err
    branch_id = json.loads(out)["branch_id"]
    code, out, err = cli("gc", "--dry-run", "--json", cwd=project)
    assert code == 0, err
    report = json.loads(out)
    assert report["dry_run"] is True and report["deleted"] == []
    assert branch_id not in {c["id"] for c in report["candidates"]}  # alive and not expired
    code, out, err = cli("down", cwd=project)
    assert code == 0, err


class _Branch:
    def __init__(self, name: str, annotation: dict[str, str], expires_at=None, created_at=None,
                 parent_id=None, updated_at=None) -> None:
        self.id = "br-" + name.replace("/", "-")
        self.name = name
        self.annotation = annotation
        self.expires_at = expires_at
        self.created_at = created_at
        self.updated_at = updated_at
        self.parent_id = parent_id
        self.current_state = "ready"


def test_gc_candidates_rules() -> None:
    from datetime import UTC, datetime, timedelta

    from cathouse_harness.branching import lifecycle as b
    from cathouse_harness.branching.templates import TEMPLATE_TTL

    now = datetime.now(UTC)
    host = __import__("socket").gethostname()[:60]
    dead_pid = "999999999"
    mine = {b.MARK: "1", b.MARK_HOST: host}
    theirs = {b.MARK: "1", b.MARK_HOST: "another-machine"}
    found = [
        _Branch("harness/r1/main", {**mine, b.MARK_KIND: "session", b.MARK_RUN: "r1", b.MARK_PID: dead_pid}),
        _Branch(
            "harness/r2/main",
            {**mine, b.MARK_KIND: "session", b.MARK_RUN: "r2", b.MARK_PID: str(os.getpid())},
        ),
        _Branch("harness/dev/x", {**mine, b.MARK_KIND: "dev"}, expires_at=now - timedelta(seconds=1)),
        # other machines' templates: one reused an hour ago stays, one idle for two days goes
        _Branch("harness/template/main/other",
                {**theirs, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "other"},
                expires_at=now + TEMPLATE_TTL - timedelta(hours=1)),
        _Branch("harness/template/main/old", {**theirs, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "old"},
                expires_at=now + TEMPLATE_TTL - timedelta(days=2)),
        # built here for migrations this checkout no longer has: outdated at once
        _Branch("harness/template/main/edited", {**mine, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "ed"},
                updated_at=now - timedelta(minutes=5)),
        # this checkout's own template stays while it lives, however idle
        _Branch("harness/template/main/new", {**mine, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "new"},
                expires_at=now + TEMPLATE_TTL - timedelta(days=3)),
        _Branch("harness/template/main/new.building", {**mine, b.MARK_KIND: "template",
                b.MARK_FINGERPRINT: "new"}, created_at=now - timedelta(hours=1)),
        # ready templates carry no expiry (Neon refuses children of an expiring branch):
        # they count from becoming ready (their last update)
        _Branch("harness/template/ready/fresh", {**theirs, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "x"},
                updated_at=now - timedelta(hours=1)),
        _Branch("harness/template/ready/stale", {**theirs, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "x"},
                updated_at=now - timedelta(days=2)),
        # expired and idle, but a live session still forks from it
        _Branch("harness/template/main/busy", {**mine, b.MARK_KIND: "template", b.MARK_FINGERPRINT: "busy"},
                expires_at=now - timedelta(seconds=1)),
        _Branch("harness/r3/main", {**mine, b.MARK_KIND: "session", b.MARK_RUN: "r3",
                b.MARK_PID: str(os.getpid())}, parent_id="br-harness-template-main-busy"),
    ]
    chosen = {branch.name: why for branch, why in gc_candidates(found, current_fingerprint="new", run=None)}
    assert chosen == {
        "harness/r1/main": "its test process is gone",
        "harness/dev/x": "expired",
        "harness/template/main/old": chosen.get("harness/template/main/old", "missing"),
        "harness/template/main/new.building": "abandoned template build",
        "harness/template/main/edited": "template of older migrations, built on this machine",
        "harness/template/ready/stale": chosen.get("harness/template/ready/stale", "missing"),
    }
    assert chosen["harness/template/main/old"].startswith("template unused since ")
    assert chosen["harness/template/ready/stale"].startswith("template unused since ")
    only_run = gc_candidates(found, current_fingerprint="new", run="r2")
    assert [branch.name for branch, _ in only_run] == ["harness/r2/main"]


def test_emulator_prints_shell_lines_and_serves_a_plain_client(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "cathouse_harness", "emulator", "--home", str(tmp_path / "emu")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(3)]
        values = dict(line.split("=", 1) for line in lines)
        assert set(values) == {"NEON_API_HOST", "NEON_API_KEY", "NEON_PROJECT_ID"}
        assert values["NEON_API_HOST"].startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            f"{values['NEON_API_HOST']}/projects/{values['NEON_PROJECT_ID']}/branches",
            headers={"Authorization": f"Bearer {values['NEON_API_KEY']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            names = [b["name"] for b in json.load(response)["branches"]]
        assert names == ["main"]
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    assert code == 0
    from cathouse_harness.local.compute.layout import memory_bases

    for directory in memory_bases(tmp_path / "emu"):
        __import__("shutil").rmtree(directory, ignore_errors=True)


def test_a_command_runs_from_inside_a_running_event_loop(project: Path) -> None:
    """An async test may drive the CLI in process: its commands must not need the
    calling thread to be free of an event loop (asyncio.run is refused there)."""
    import asyncio

    async def from_a_loop() -> tuple[int, str, str]:
        return cli("list", "--json", cwd=project)

    code, out, err = asyncio.run(from_a_loop())
    assert code == 0, err
    assert "branches" in json.loads(out)


def test_up_whose_migrations_fail_leaves_no_branch(project: Path) -> None:
    """A branch `up` created is deleted again when its migrations fail: without them it
    is of no use, and nobody holds its id."""
    versions = project / "auth-service" / "alembic" / "versions"
    (versions / "ffff00000001_broken.py").write_text(
        "from alembic import op\n\n"
        "revision = 'ffff00000001'\ndown_revision = '8b4e6d0a5c21'\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n    op.execute('SELECT no_such_function()')\n\n\n"
        "def downgrade():\n    pass\n",
        encoding="utf-8",
    )
    code, out, err = cli("up", "--json", "--name", "cli-broken", cwd=project)
    assert code != 0 and len(error_lines(err)) == 1, err
    assert "ffff00000001" in err
    code, out, _ = cli("list", "--json", cwd=project)
    assert "harness/dev/cli-broken" not in {b["name"] for b in json.loads(out)["branches"]}
    assert not (project / ".env").exists()


def test_reset_of_a_schema_only_branch_says_why_in_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema-only branch is a root branch, as on Neon: `reset` (from its parent) names
    that, instead of only 'no parent'."""
    monkeypatch.setenv("CATHOUSE_SCHEMA_ONLY", "1")
    code, out, err = cli("up", "--json", "--name", "cli-schema", cwd=project)
    assert code == 0, err
    try:
        code, out, err = cli("reset", "cli-schema", cwd=project)
        assert code == 2
        [line] = error_lines(err)
        assert "schema-only branch is a root branch" in line and "Traceback" not in err
    finally:
        assert cli("down", cwd=project)[0] == 0
