"""The fault matrix: the plugin run against the local Neon server with faults switched on.

Every case is judged the same way (`_support`): branches leaked (anything new except one
ready template per name), any change to or operation on a branch the harness did not
create (the default branch, a decoy, a `harness/`-named impostor without the marks, and a
protected branch carrying the marks), and whether the parent branch's schema and data
checksum changed. A table of all cases is printed at the end of the run and written to
`<pytest basetemp>/fault-matrix.json`; a leak or a touch fails the case.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from cathouse_harness.branching.lifecycle import MARK, MARK_KIND, MARK_RUN

from tests._pins import SUITE_PINS
from tests.reliability._cases import CRASH_FILE, TEST_FILE, add_revision
from tests.reliability._support import (
    LocalNeon,
    Row,
    execute,
    finish,
    leaked_branches,
    make_project,
    parent_changed,
    plugin_env,
    run_plugin,
    start_plugin_run,
    take_baseline,
    touched_branches,
    wait_for,
)
from tests.reliability.conftest import MATRIX_FILE

WATCHDOG_DEADLINE = 10.0  # the bound: the run's branches are gone 10 s after it died


@dataclass
class Lab:
    neon: LocalNeon
    home: Path
    root: Path
    project: Path
    gates: Path
    run_id: str

    def env(self, *stops: str, **extra: str) -> dict[str, str]:
        return {"RELIABILITY_GATES": str(self.gates), "RELIABILITY_STOP_AT": ",".join(stops), **extra}

    def start(self, *args: str, project: Path | None = None, run_id: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return start_plugin_run(project or self.project, self.home, run_id or self.run_id, *args, env=env)

    def run(
        self, *args: str, project: Path | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        return run_plugin(project or self.project, self.home, self.run_id, *args, env=env)

    def reached(self, gate: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
        def there() -> bool:
            if process.poll() is not None:
                out = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"run ended (code {process.returncode}) before gate {gate}:\n{out}")
            return (self.gates / f"reached-{gate}").exists()

        wait_for(there, timeout, f"gate {gate}")

    def release(self, gate: str) -> None:
        (self.gates / f"go-{gate}").write_text("go")

    def session_branches(self, run_id: str | None = None) -> list[dict[str, object]]:
        run_id = run_id or self.run_id
        return [
            b for b in self.neon.branches()
            if (b.get("annotation") or {}).get(MARK_RUN) == run_id
            and (b.get("annotation") or {}).get(MARK_KIND) == "session"
        ]

    def new_project(self, name: str, tests: dict[str, str] | None = None) -> Path:
        return make_project(self.root / name, tests or {"test_app.py": TEST_FILE})


CASES: dict[str, Callable[[Lab], str]] = {}


def case(name: str) -> Callable[[Callable[[Lab], str]], Callable[[Lab], str]]:
    def register(fn: Callable[[Lab], str]) -> Callable[[Lab], str]:
        CASES[name] = fn
        return fn

    return register


def _retries(output: str) -> int:
    found = re.search(r"API calls (\d+), retries (\d+)", output)
    assert found, f"no API summary in the output:\n{output}"
    return int(found[2])


def _passed(code: int, output: str, passed: int = 3) -> None:
    assert code == 0 and f"{passed} passed" in output, f"exit {code}:\n{output}"


def _faulted_run(lab: Lab, spec: str) -> tuple[int, str, int]:
    lab.neon.set_faults(spec)
    try:
        code, out = lab.run()
    finally:
        lab.neon.set_faults("")
    return code, out, (_retries(out) if code == 0 else 0)


# ---------------------------------------------------------------------- API faults


@case("no faults (baseline)")
def no_faults(lab: Lab) -> str:
    code, out = lab.run()
    _passed(code, out)
    return "passed"


@case("429 bursts with Retry-After")
def burst_429(lab: Lab) -> str:
    code, out, retries = _faulted_run(lab, "rate429=0.6,retry_after=1,limit=8,seed=3")
    _passed(code, out)
    assert retries > 0
    return f"passed, {retries} retries"


@case("423 on mutations (locked)")
def locked_423(lab: Lab) -> str:
    code, out, retries = _faulted_run(lab, "rate423=0.7,limit=8,seed=5,methods=POST/PATCH/DELETE")
    _passed(code, out)
    assert retries > 0
    return f"passed, {retries} retries"


@case("500/503")
def server_errors(lab: Lab) -> str:
    code, out, retries = _faulted_run(lab, "rate5xx=0.5,limit=8,seed=9")
    _passed(code, out)
    assert retries > 0
    return f"passed, {retries} retries"


@case("connections dropped mid-request")
def dropped(lab: Lab) -> str:
    code, out, retries = _faulted_run(lab, "drop=0.4,limit=6,seed=13")
    _passed(code, out)
    assert retries > 0
    return f"passed, {retries} retries"


@case("dropped after the mutation (lost answers)")
def dropped_after(lab: Lab) -> str:
    # Every create and delete happens but its answer is lost: a retried create must find
    # its branch by name instead of making a second one (a double shows up as a leak).
    code, out, retries = _faulted_run(lab, "drop_after=1,limit=3,methods=POST/DELETE")
    _passed(code, out)
    assert retries > 0
    return f"passed, {retries} retries, no double"


@case("slow operations (2 s each)")
def slow_ops(lab: Lab) -> str:
    code, out, _ = _faulted_run(lab, "op_delay=2")
    _passed(code, out)
    return "passed"


@case("operations end failed (30%, retried)")
def failing_ops(lab: Lab) -> str:
    code, out, _ = _faulted_run(lab, "op_fail=0.3,seed=1")
    if code == 0:
        _passed(code, out)
        return "passed"
    assert code == 1 and "step failed" in out, f"exit {code}:\n{out}"
    assert "Traceback" not in out
    line = next(li for li in out.splitlines() if "step failed" in li)
    return f"stopped cleanly (exit 1): {line.split('step failed')[0].split(':')[-1].strip()} step"


@case("create operations always fail")
def always_failing_ops(lab: Lab) -> str:
    code, out, _ = _faulted_run(lab, "op_fail=1")
    assert code == 1 and "step failed" in out, f"exit {code}:\n{out}"
    assert "Traceback" not in out
    return "stopped cleanly (exit 1), nothing left"


@case("delete operation fails at teardown")
def failed_delete(lab: Lab) -> str:
    # Teardown asks for the delete and does not wait for its operation: the run ends at
    # once, and its watchdog follows the operation and asks again when it failed.
    process = lab.start(env=lab.env("teardown"))
    lab.reached("teardown", process)
    lab.neon.set_faults("op_fail=1")
    lab.release("teardown")
    try:
        code, out = finish(process)
    finally:
        lab.neon.set_faults("")
    assert code == 0, f"the teardown waited for its failed delete:\n{out}"
    try:
        wait_for(lambda: not lab.session_branches(), WATCHDOG_DEADLINE, "the watchdog's delete")
        return "passed; the delete's operation failed after the run ended, its watchdog asked again"
    except AssertionError:
        pass  # every try of the watchdog met the fault: what is left is gc's
    gc = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "gc", "--run", lab.run_id, "--quiet"],
        cwd=lab.project, env=plugin_env(lab.home, lab.run_id), capture_output=True, text=True,
    )
    assert gc.returncode == 0, gc.stderr
    return "passed; the delete's operation failed after the run ended; gc --run removed the branch"


# ---------------------------------------------------------------------- the data plane


def _restart_postgres(home: Path) -> None:
    """`pg_ctl restart -m fast` on every
    running instance of the home (pg_ctl reuses each postmaster's own options, its
    socket directory included), as the home's OS user: every session is ended, as after
    a crash-restart or a maintenance restart of a real server."""
    from cathouse_harness.local.compute.layout import memory_bases
    from cathouse_harness.local.compute.users import home_os_user

    user = home_os_user(home)
    restarted = 0
    for base in memory_bases(home):
        for data in sorted((base / "instances").glob("*/data")):
            if not (data / "postmaster.pid").exists():
                continue
            postgres = shlex.split((data / "postmaster.opts").read_text())[0]
            subprocess.run(
                [str(Path(postgres).parent / "pg_ctl"), "restart", "-D", str(data), "-m", "fast", "-w",
                 "-l", str(data.parent / "restart.log")],
                check=True, capture_output=True, cwd=data.parent, **user.popen_kwargs(),  # type: ignore[arg-type]
            )
            restarted += 1
    assert restarted, "no PostgreSQL instance runs for the local server"


@case("PostgreSQL restarted mid-session")
def postgres_restart(lab: Lab) -> str:
    process = lab.start(env=lab.env("test"))
    lab.reached("test", process)
    _restart_postgres(lab.home)
    lab.release("test")
    code, out = finish(process)
    _passed(code, out)
    return "passed (fresh connections after the restart)"


# ---------------------------------------------------------------------- interrupts


def _interrupted(lab: Lab, process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    code, out = finish(process, timeout=90)
    assert "Traceback" not in out or "KeyboardInterrupt" in out, out
    return code, out


@case("SIGINT during branch creation")
def sigint_create(lab: Lab) -> str:
    lab.neon.set_faults("op_delay=1.5")
    try:
        process = lab.start()
        name = f"harness/{lab.run_id}/main"
        wait_for(lambda: any(b["name"] == name for b in lab.neon.branches()), 60, "the create")
        code, _ = _interrupted(lab, process)
    finally:
        lab.neon.set_faults("")
    return f"interrupted (exit {code})"


@case("SIGINT during migration")
def sigint_migration(lab: Lab) -> str:
    project = lab.new_project("sigint-migration")
    add_revision(project, "a1b2c3d4e5f6", "SELECT pg_sleep(8)", "slow migration")
    process = lab.start(project=project)

    def sleeping() -> bool:
        building = [b for b in lab.neon.branches() if str(b["name"]).endswith(".building")]
        if not building or building[0].get("current_state") != "ready":
            return False
        async def busy() -> bool:
            conn = await asyncpg.connect(lab.neon.direct_url(str(building[0]["id"])))
            try:
                return bool(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' "
                    "AND pid <> pg_backend_pid()"
                ))
            finally:
                await conn.close()

        return asyncio.run(busy())

    wait_for(sleeping, 60, "the migration to run", interval=0.1)
    code, _ = _interrupted(lab, process)
    return f"interrupted (exit {code}); half-built template removed"


@case("SIGINT during tests")
def sigint_tests(lab: Lab) -> str:
    process = lab.start(env=lab.env("test"))
    lab.reached("test", process)
    code, _ = _interrupted(lab, process)
    return f"interrupted (exit {code})"


@case("SIGINT during teardown")
def sigint_teardown(lab: Lab) -> str:
    process = lab.start(env=lab.env("teardown"))
    lab.reached("teardown", process)
    lab.neon.set_faults("op_delay=1.5")
    try:
        lab.release("teardown")
        session = wait_for(lab.session_branches, 10, "the session branch")[0]

        def deleting() -> bool:
            return any(
                op.get("branch_id") == session["id"] and op["action"] == "delete_timeline"
                and op["status"] not in ("finished", "failed")
                for op in lab.neon.operations()
            ) or any(op.get("branch_id") == session["id"] for op in lab.neon.operations()
                     if op["action"].startswith("delete"))

        wait_for(deleting, 30, "the teardown's delete")
        code, _ = _interrupted(lab, process)
    finally:
        lab.neon.set_faults("")
    return f"interrupted (exit {code})"


@case("SIGKILL of the whole run")
def sigkill(lab: Lab) -> str:
    process = lab.start(env=lab.env("test"))
    lab.reached("test", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    killed = time.monotonic()
    wait_for(lambda: not lab.session_branches(), WATCHDOG_DEADLINE, "the watchdog", interval=0.1)
    return f"watchdog deleted the branch in {time.monotonic() - killed:.1f} s"


# ---------------------------------------------------------------------- migrations, xdist, races


@case("a migration that fails")
def failing_migration(lab: Lab) -> str:
    project = lab.new_project("bad-migration")
    add_revision(project, "badbadbad001", "SELECT * FROM installation.no_such_table", "broken")
    code, out = lab.run(project=project)
    # a broken migration fails the run (1), never pytest's internal error (3)
    assert code == 1, f"exit {code}:\n{out}"
    assert "installation-service" in out and "badbadbad001" in out, out
    assert "Traceback" not in out, out
    return "stopped (exit 1) naming service and revision"


@case("an xdist worker crashes")
def worker_crash(lab: Lab) -> str:
    project = lab.new_project("crash", {"test_crash.py": CRASH_FILE})
    code, out = lab.run("-n", "2", "--max-worker-restart", "0", project=project)
    assert code != 0 and "crashed" in out, out
    wait_for(lambda: not lab.session_branches(), WATCHDOG_DEADLINE, "the crashed worker's branch")
    return f"run failed (exit {code}), crashed worker's branch removed"


@case("two runs race to build the template")
def template_race(lab: Lab) -> str:
    projects = []
    for side in ("left", "right"):
        project = lab.new_project(f"race-{side}")
        add_revision(project, "race00000001", "CREATE TABLE installation.raced (n int)", "race")
        projects.append(project)
    processes = [
        lab.start(project=p, run_id=f"{lab.run_id}-{i}") for i, p in enumerate(projects)
    ]
    results = [finish(p) for p in processes]
    for code, out in results:
        _passed(code, out)
    templates = [
        b for b in lab.neon.branches()
        if (b.get("annotation") or {}).get(MARK_KIND) == "template"
        and any(str(b["id"]) in out for _, out in results)
    ]
    names = {str(b["name"]) for b in templates}
    assert len(templates) == 1 and len(names) == 1, templates
    built = sum("built by this run" in out for _, out in results)
    return f"both passed; exactly 1 template ({built} built, {2 - built} reused)"


# ---------------------------------------------------------------------- the key


def _restart_with_new_key(lab: Lab) -> None:
    """Revoke the key: stop the local server, drop its key file and start it again on the
    same port, so the running session's key is refused with 401."""
    from cathouse_harness.local.discovery import discovery_path
    from cathouse_harness.local.launch import stop_local_server

    port = lab.neon.info.port
    stop_local_server(lab.home, restart=True)  # the branches stay (as on Neon)
    (lab.home / "local-api-key").unlink()
    env = {k: v for k, v in os.environ.items() if k in SUITE_PINS or not k.startswith("CATHOUSE_")}
    subprocess.Popen(
        [sys.executable, "-m", "cathouse_harness.local.server", "--home", str(lab.home), "--port", str(port),
         "--daemon", "--idle-timeout", "900"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env, cwd=lab.home,
    )
    wait_for(lambda: discovery_path(lab.home).exists(), 60, "the restarted server")
    lab.neon.refresh()


@case("API key revoked mid-run")
def key_revoked(lab: Lab) -> str:
    process = lab.start(env=lab.env("test"))
    lab.reached("test", process)
    _restart_with_new_key(lab)
    lab.release("test")
    code, out = finish(process)
    left = lab.session_branches()
    assert left, "the branch vanished although no key could delete it"
    assert all(str(b["id"]) in out for b in left), f"the leftover branch is not named:\n{out}"
    assert "cathouse-branch" in out, f"no command to remove the branch:\n{out}"
    gc = subprocess.run(
        [sys.executable, "-m", "cathouse_harness", "gc", "--run", lab.run_id, "--quiet"],
        cwd=lab.project, env=plugin_env(lab.home, lab.run_id), capture_output=True, text=True,
    )
    assert gc.returncode == 0, gc.stderr
    return f"401 at teardown (exit {code}): {len(left)} branch named with its command; gc --run removed it"


# ---------------------------------------------------------------------- the driver


DECOY_DATA = (
    "CREATE TABLE IF NOT EXISTS public.precious (id int PRIMARY KEY, note text NOT NULL)",
    "INSERT INTO public.precious SELECT g, md5(g::text) FROM generate_series(1, 200) g "
    "ON CONFLICT DO NOTHING",
)


@pytest.fixture(scope="module")
def lab_base(neon: LocalNeon, neon_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    root = tmp_path_factory.mktemp("matrix")
    execute(neon.direct_url(neon.default_branch()["id"]), *DECOY_DATA)
    for name, marks, protected in (
        ("decoy/precious", None, False),
        ("harness/impostor/main", None, False),  # looks like ours, carries no marks
        ("harness/protected/main", {MARK: "1", MARK_RUN: "x", MARK_KIND: "session"}, True),
    ):
        branch = neon.create_branch(name, annotation=marks, protected=protected)
        execute(neon.direct_url(branch["id"]), "INSERT INTO public.precious VALUES (1000, 'mine')")
    project = make_project(root / "project", {"test_app.py": TEST_FILE})
    return Lab(neon, neon_home, root, project, root, "")


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Row]]:
    collected: list[Row] = []
    yield collected
    path = tmp_path_factory.getbasetemp() / MATRIX_FILE
    path.write_text(json.dumps([r.as_dict() for r in collected], indent=2))
    from tests.reliability._support import format_table

    print("\n" + "\n".join(format_table(r.as_dict() for r in collected)), file=sys.stderr)


@pytest.mark.parametrize("name", list(CASES))
def test_fault_case(name: str, lab_base: Lab, rows: list[Row], tmp_path: Path) -> None:
    lab = Lab(lab_base.neon, lab_base.home, tmp_path, lab_base.project, tmp_path / "gates",
              f"m{len(rows):02d}")
    lab.gates.mkdir()
    row = Row(name)
    rows.append(row)
    baseline = take_baseline(lab.neon)
    try:
        row.outcome = CASES[name](lab)
    except BaseException as exc:
        row.outcome = f"ERROR: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:120]
        raise
    finally:
        lab.neon.set_faults("")
        deadline = time.monotonic() + WATCHDOG_DEADLINE
        while leaked_branches(lab.neon, baseline) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = leaked_branches(lab.neon, baseline)
        touched = touched_branches(lab.neon, baseline)
        row.leaked, row.touched = len(leaked), len(touched)
        row.parent_changed = parent_changed(lab.neon, baseline)
        row.details = leaked + touched
    assert not leaked, f"leaked: {leaked}"
    assert not touched, f"touched: {touched}"
    assert not row.parent_changed, "the parent branch's schema or data changed"
