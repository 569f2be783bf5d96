"""`cathouse-branch migrate` (as `python -m harness migrate` and in process) and
scripts/init-local-db.sh."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import current_revisions

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "init-local-db.sh"
HEADS = {
    "auth-service": "8b4e6d0a5c21",
    "catalog-service": "9e7f3b6c1d42",
    "installation-service": "7d1b5f8a3e64",
}


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATION_DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, stdin: str | None = None,
        **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=environment(**extra), capture_output=True, text=True, timeout=120,
        input=stdin,
    )


def test_module_migrates_then_says_nothing_changed(fresh_database_url, example_copy):
    first = run([sys.executable, "-m", "cathouse_harness", "migrate", "--url", "-"], example_copy,
                stdin=fresh_database_url + "\n")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 4
    for line, (name, head) in zip(lines, HEADS.items(), strict=False):
        assert line.startswith(f"{name}: base -> {head} (") and line.endswith(" s)")
    assert lines[3].startswith("all services at head; migrated 3 of 3 services in ")

    second = run([sys.executable, "-m", "cathouse_harness", "migrate", "--project-dir", str(example_copy)],
                 REPO, MIGRATION_DATABASE_URL=fresh_database_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        *(f"{name}: at head {head}, nothing to do" for name, head in HEADS.items()),
        "all services at head; nothing changed",
    ]


def test_failing_migration_exits_1_with_one_line(fresh_database_url, example_copy,
                                                add_revision):
    add_revision(example_copy, "catalog-service", "c0ffee000009", HEADS["catalog-service"],
                 'op.execute("SELECT 1 / 0")')
    password = urlsplit(fresh_database_url).password
    assert password  # the shared fixture's role logs in with a password
    done = run([sys.executable, "-m", "cathouse_harness", "migrate"], example_copy,
               MIGRATION_DATABASE_URL=fresh_database_url)
    assert done.returncode == 1
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("cathouse-branch:")]
    assert len(error_lines) == 1
    line = error_lines[0]
    assert "catalog-service" in line and "c0ffee000009" in line and "division by zero" in line
    assert password not in done.stderr + done.stdout
    assert done.stdout.splitlines()[0].startswith("auth-service: base -> 8b4e6d0a5c21")
    settings = load_settings(example_copy, environ={})
    assert current_revisions(settings, fresh_database_url)["catalog-service"] == (
        HEADS["catalog-service"]
    )


def test_url_precedence_argument_environment_dotenv(fresh_database_url, example_copy,
                                                    monkeypatch, capsys):
    monkeypatch.delenv("MIGRATION_DATABASE_URL", raising=False)
    broken = "postgresql://nobody@127.0.0.1:9/none"
    (example_copy / ".env").write_text(f"MIGRATION_DATABASE_URL={broken}\n")
    # .env alone: used (and fails to connect, proving it was read)
    assert cli_main(["migrate", "--project-dir", str(example_copy)]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err
    # environment beats .env
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    assert cli_main(["migrate", "--project-dir", str(example_copy)]) == 0
    capsys.readouterr()
    # argument beats environment (a URL with a password only through stdin)
    monkeypatch.setenv("MIGRATION_DATABASE_URL", broken)
    monkeypatch.setattr("sys.stdin", io.StringIO(fresh_database_url + "\n"))
    assert cli_main(["migrate", "--project-dir", str(example_copy), "--url", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "all services at head; nothing changed"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "MIGRATION_DATABASE_URL"),
        (["--url", "mysql://u@h/db"], "is not a postgresql:// URL"),
        (["--url", "postgresql://u:TopSecretPw@h/db"], "other local users can read"),
        (["--project-dir", "/nonexistent/dir"], "is not a directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(example_copy, args, expected, monkeypatch, capsys):
    monkeypatch.delenv("MIGRATION_DATABASE_URL", raising=False)
    code = cli_main(["migrate", "--project-dir", str(example_copy), *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "TopSecretPw" not in captured.err and "Traceback" not in captured.err


def test_bad_config_exits_2(example_copy, fresh_database_url, capsys, monkeypatch):
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"auth-service/alembic.ini"',
                                                       '"auth-service/missing.ini"'))
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    assert cli_main(["migrate", "--project-dir", str(example_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.ini" in err


def test_missing_url_exits_2_as_a_subprocess(example_copy):
    done = run([sys.executable, "-m", "cathouse_harness", "migrate"], example_copy)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "MIGRATION_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr


def test_init_local_db_script_twice(fresh_database_url, example_copy):
    (example_copy / ".env").write_text(f"MIGRATION_DATABASE_URL={fresh_database_url}\n")
    first = run(["bash", str(SCRIPT)], example_copy, PYTHON=sys.executable)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("auth-service: base -> 8b4e6d0a5c21")
    second = run(["bash", str(SCRIPT)], example_copy, PYTHON=sys.executable)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "all services at head; nothing changed"
    settings = load_settings(example_copy, environ={})
    assert current_revisions(settings, fresh_database_url) == HEADS


def test_init_local_db_script_passes_arguments(fresh_database_url, example_copy):
    done = run(["bash", str(SCRIPT), "--url", "-", "--target", "heads"],
               example_copy, stdin=fresh_database_url + "\n", PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("all services at head; migrated 3 of 3")


def test_init_local_db_script_without_url_exits_2(example_copy):
    done = run(["bash", str(SCRIPT)], example_copy, PYTHON=sys.executable)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MIGRATION_DATABASE_URL is not set" in lines[0]


def test_init_local_db_script_finds_harness_without_pythonpath(fresh_database_url, example_copy):
    env = environment(PYTHON=sys.executable, MIGRATION_DATABASE_URL=fresh_database_url)
    env.pop("PYTHONPATH")
    done = subprocess.run(["bash", str(SCRIPT)], cwd=example_copy, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
