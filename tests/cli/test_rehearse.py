"""`cathouse-branch rehearse` and `cathouse-branch diff` on the embedded default, against
the example's "production" branch (examples/cathouse/production_branch.py: every service
migrated to what is deployed, auth-service one revision behind, with users loaded).

One project and one production branch serve the module: forking it is what is tested,
and no test writes to it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import current_revisions

from tests.cli._support import cli, error_lines
from tests.plugin._support import copy_example

ROWS = 500
UPDATE_REVISION = "ffff00000027"
SLEEP_REVISION = "ffff00000028"


@contextmanager
def pending(project: Path, revision: str, down: str, body: str) -> Iterator[None]:
    """An auth-service revision after `down` whose upgrade executes `body`, there for the
    block only (the module's project is shared)."""
    path = project / "auth-service" / "alembic" / "versions" / f"{revision}_rehearsal.py"
    path.write_text(
        f'"""{revision} for the rehearsal tests"""\n\nfrom alembic import op\n\n'
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n    op.execute({body!r})\n\n\n"
        "def downgrade():\n    pass\n",
        encoding="utf-8",
    )
    try:
        yield
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example with a "production" branch holding ROWS users, auth-service behind."""
    project = copy_example(tmp_path_factory.mktemp("rehearse"))
    sys.path.insert(0, str(project))
    try:
        from production_branch import main as make_production  # the example's own script
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("production_branch", None)
    assert make_production(["--rows", str(ROWS), "--project-dir", str(project)]) == 0
    (project / "loaded-at").write_text(datetime.now(UTC).isoformat())
    yield project


def _rehearsal_branches(project: Path) -> list[str]:
    code, out, err = cli("list", "--json", cwd=project)
    assert code == 0, err
    return [b["name"] for b in json.loads(out)["branches"] if b["kind"] == "rehearsal"]


def _production_id(project: Path) -> str:
    code, out, err = cli("url", "production", "--json", cwd=project)
    assert code == 0, err
    return str(json.loads(out)["branch_id"])


def _production_revisions(project: Path) -> dict[str, str | None]:
    code, out, err = cli("url", "production", "--show-secrets", "--quiet", cwd=project)
    assert code == 0, err
    return current_revisions(load_settings(project), out.strip())


def test_rehearse_human_report_names_the_lock(production: Path) -> None:
    # the first whole second after production was loaded: the embedded default keeps no
    # WAL history, only a branch's state since it was last connected to (this test comes
    # first in the module so that nothing has since), and Neon's timestamps are whole seconds
    moment = datetime.fromisoformat((production / "loaded-at").read_text())
    moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    ahead = (moment - datetime.now(UTC)).total_seconds()
    if ahead > 0:  # only when this test runs first: a moment ago is all it waits
        time.sleep(ahead + 0.05)
    at = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, err = cli("rehearse", "--parent", "production", "--at", at, cwd=production)
    assert code == 0, err
    assert out.splitlines()[0].endswith(f"a fork of production ({_production_id(production)}) "
                                        f"as of {at.replace('Z', '+00:00')}")
    line = next(line for line in out.splitlines() if line.startswith("auth-service 8b4e6d0a5c21"))
    assert "longest blocking lock ACCESS EXCLUSIVE on auth.users" in line
    assert "schema diff against production:" in out
    assert _rehearsal_branches(production) == []


def test_rehearse_reports_each_revision_its_locks_rows_and_the_diff(production: Path) -> None:
    before = _production_revisions(production)
    assert before["auth-service"] == "3f1a9c2b7d10"
    with pending(production, UPDATE_REVISION, "8b4e6d0a5c21",
                 "UPDATE auth.users SET display_name = upper(display_name)"):
        code, out, err = cli("rehearse", "--parent", "production", "--json", cwd=production)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["parent"]["name"] == "production"
    assert [(r["service"], r["revision"]) for r in report["revisions"]] == [
        ("auth-service", "8b4e6d0a5c21"), ("auth-service", UPDATE_REVISION)]
    add_column, update = report["revisions"]
    # ADD COLUMN takes ACCESS EXCLUSIVE on the existing table and keeps it to the commit,
    # through the index build (SHARE) that follows in the same revision
    longest = add_column["longest_blocking_lock"]
    assert (longest["target"], longest["mode"]) == ("auth.users", "AccessExclusiveLock")
    assert 0 <= longest["seconds"] <= add_column["seconds"] + 0.05
    assert {(lock["target"], lock["mode"]) for lock in add_column["locks"]} >= {
        ("auth.users", "ShareLock"), ("auth.ix_users_created_at", "AccessExclusiveLock")}
    new_index = next(lock for lock in add_column["locks"] if lock["target"] == "auth.ix_users_created_at")
    assert new_index["new_relation"] is True  # nobody can wait on an index not yet committed
    assert update["rows"] == {"auth.users": ROWS} and add_column["rows_total"] == 0
    assert "+    is_active boolean DEFAULT true NOT NULL" in report["schema_diff"].splitlines()
    assert report["lock_sampling"]["method"] == "pg_locks"
    # the fork is gone and the parent was only read
    assert _rehearsal_branches(production) == []
    assert _production_revisions(production) == before


def test_a_dropped_table_s_lock_comes_from_the_samples(production: Path) -> None:
    """A table the revision drops is gone from its own catalog by its end, so only the
    pg_locks samples of the second connection see its ACCESS EXCLUSIVE lock; the
    revision holds it long enough for several samples."""
    with pending(production, SLEEP_REVISION, "8b4e6d0a5c21",
                 "DROP TABLE installation.installation_permissions; SELECT pg_sleep(0.3)"):
        code, out, err = cli("rehearse", "--parent", "production", "--json", cwd=production)
    assert code == 0, err
    dropping = json.loads(out)["revisions"][-1]
    assert dropping["revision"] == SLEEP_REVISION
    dropped = [lock for lock in dropping["locks"]
               if lock["target"] == "installation.installation_permissions"]
    assert [(lock["mode"], lock["measured"], lock["new_relation"]) for lock in dropped] == [
        ("AccessExclusiveLock", True, False)]
    assert 0 < dropped[0]["seconds"] <= dropping["seconds"]
    # its foreign keys' tables are locked too, and those stay in the transaction's own list
    assert dropping["longest_blocking_lock"]["mode"] == "AccessExclusiveLock"
    assert "-CREATE TABLE installation.installation_permissions (" in json.loads(out)["schema_diff"]


def test_a_budget_exceeded_exits_1_and_says_which(production: Path) -> None:
    code, out, err = cli("rehearse", "--parent", "production", "--json", "--max-duration", "1ms",
                         cwd=production)
    assert code == 1, err
    report = json.loads(out)
    assert not report["ok"]
    assert any("8b4e6d0a5c21" in line and "--max-duration" in line for line in report["over_budget"])
    assert _rehearsal_branches(production) == []


@pytest.mark.parametrize("args", [("--max-lock", "soon"), ("--at", "yesterday"),
                                  ("--parent", "no-such-branch")])
def test_bad_input_is_one_line_exit_2(production: Path, args: tuple[str, ...]) -> None:
    code, _, err = cli("rehearse", *args, cwd=production)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert args[0] in err
    assert _rehearsal_branches(production) == []


def test_a_failing_revision_is_reported_with_its_sqlstate_and_the_fork_removed(production: Path) -> None:
    with pending(production, UPDATE_REVISION, "8b4e6d0a5c21",
                 "SELECT no_such_function()"):
        code, out, err = cli("rehearse", "--parent", "production", "--json", cwd=production)
    assert code == 1, err
    failed = json.loads(out)["revisions"][-1]
    assert (failed["revision"], failed["sqlstate"]) == (UPDATE_REVISION, "42883")
    assert _rehearsal_branches(production) == []


def test_keep_then_diff_shows_the_added_column_and_down_removes_it(production: Path) -> None:
    code, out, err = cli("rehearse", "--parent", "production", "--keep", cwd=production)
    assert code == 0, err
    assert "password" not in out.lower() and "://" not in out
    kept = _rehearsal_branches(production)
    assert len(kept) == 1
    assert "remove it with: cathouse-branch down br-" in out and 'psql "$(cathouse-branch url br-' in out
    code, out, err = cli("diff", kept[0], cwd=production)  # against its parent, production
    assert code == 0, err
    assert out.startswith("--- ") and "+    is_active boolean DEFAULT true NOT NULL" in out.splitlines()
    code, out, err = cli("diff", kept[0], "--against", kept[0], "--json", cwd=production)
    assert code == 0 and json.loads(out)["changed"] is False, err
    code, _, err = cli("down", kept[0], cwd=production)
    assert code == 0, err
    assert _rehearsal_branches(production) == []


def test_ctrl_c_during_a_revision_leaves_no_branch(production: Path) -> None:
    with pending(production, SLEEP_REVISION, "8b4e6d0a5c21", "SELECT pg_sleep(60)"):
        child = subprocess.Popen(
            [sys.executable, "-m", "cathouse_harness", "rehearse", "--parent", "production",
             "--project-dir", str(production)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        )
        assert child.stderr is not None
        seen = []
        for line in child.stderr:  # the revision says itself before it runs
            seen.append(line)
            if f"migrating auth-service to {SLEEP_REVISION}" in line:
                break
        else:
            pytest.fail("".join(seen))
        child.send_signal(signal.SIGINT)
        _, rest = child.communicate(timeout=60)
    assert child.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert _rehearsal_branches(production) == []


def test_budget_counts_only_locks_others_could_wait_on() -> None:
    from cathouse_harness.rehearsal.run import Budget, mode_name
    from cathouse_harness.rehearsal.watch import LockHeld, RevisionReport

    report = RevisionReport("auth-service", "8b4e6d0a5c21", None, 2.0, locks=(
        LockHeld("auth.users", "RowExclusiveLock", 1.9, exact=True),  # plain writes block nobody
        LockHeld("auth.ix_new", "AccessExclusiveLock", 1.8, exact=True, new=True),  # not visible yet
        LockHeld("auth.users", "ShareLock", 0.4, exact=False),
    ))
    assert report.longest() == report.locks[2]
    assert report.longest(access_exclusive=True) is None
    assert Budget(max_lock=0.5).exceeded([report]) == []
    assert Budget(max_lock=0.3).exceeded([report]) == [
        "auth-service 8b4e6d0a5c21 held SHARE on auth.users for up to 0.40 s (--max-lock 0.3 s)"]
    assert Budget(max_duration=1.0).exceeded([report]) == [
        "auth-service 8b4e6d0a5c21 took 2.00 s (--max-duration 1 s)"]
    assert mode_name("ShareRowExclusiveLock") == "SHARE ROW EXCLUSIVE"
