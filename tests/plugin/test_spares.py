"""The spare branch (#27 part 2): one fork of the template made behind a session, claimed
by the next session on the machine instead of forking (`cathouse_harness.branching.spares`).

One home and server for the module (the suite turns spares off; this module turns them
on); the test of other migrations runs last, as its gc removes the module's template.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cathouse_harness.branching.lifecycle import harness_branches
from cathouse_harness.branching.spares import SpareRecord, forget_expired, recorded, why_not_usable
from cathouse_harness.cleanup import gc
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.neon.backend import connect_backend, open_client
from cathouse_harness.neon.models import Branch
from cathouse_harness.session.branch_session import BranchSession
from cathouse_harness.support.marks import MARK, MARK_FINGERPRINT, MARK_HOST, MARK_KIND
from cathouse_harness.support.polling import Backoff, wait_until

from tests.cli._support import cli
from tests.plugin._support import confirmed_deletes, copy_example, home_of_its_own

LOOK = Backoff(0.05, most=0.5, growth=1.5)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    spares = tmp_path_factory.mktemp("spares")
    with pytest.MonkeyPatch.context() as patch, home_of_its_own(spares, patch, CATHOUSE_SPARE="true") as made:
        yield made


@pytest.fixture(scope="module")
def project(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_example(tmp_path_factory.mktemp("spares-project"))


@pytest.fixture
def settings(project: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.setenv("CATHOUSE_SPARE", "true")
    return load_settings(project)


def _listed(settings: Settings) -> list[Branch]:
    confirmed_deletes(settings)

    async def listed() -> list[Branch]:
        backend = connect_backend(settings)
        async with open_client(backend) as client:
            return await harness_branches(client, backend.project_id)

    return asyncio.run(listed())


def _spares(settings: Settings) -> list[Branch]:
    return [b for b in _listed(settings) if b.annotation.get(MARK_KIND) == "spare"]


def _session(settings: Settings, run_id: str) -> BranchSession:
    """A session started and finished, its refill (if it started one) waited for."""
    session = BranchSession(settings, run_id=run_id)
    try:
        session.start()
    finally:
        session.finish()
    assert session.report.delete_failed == []
    refill = session.refill_process
    if refill is not None:
        assert refill.wait(timeout=120) == 0
    return session


def _record(settings: Settings, session: BranchSession) -> SpareRecord | None:
    slot = session._spares._slot
    assert slot is not None, "the session found a template"
    return recorded(slot)


def _ready_spare(settings: Settings, run_id: str) -> tuple[BranchSession, SpareRecord]:
    """A session after which the machine holds a recorded spare."""
    session = _session(settings, run_id)
    record = _record(settings, session)
    assert record is not None
    return session, record


def test_the_next_session_claims_the_spare_and_the_refill_follows(settings: Settings) -> None:
    _, spare = _ready_spare(settings, "sp-a1")
    assert [b.id for b in _spares(settings)] == [spare.branch_id]

    second = BranchSession(settings, run_id="sp-a2")
    try:
        handle = second.start()
        assert second.report.spare == "claimed"
        assert handle.id == spare.branch_id and handle.parent_id == second.template_id
        assert handle.name == "harness/sp-a2/main"
        # renamed behind the session, to the session's name
        assert wait_until(
            lambda: any(b.id == handle.id and b.name == handle.name for b in _listed(settings)),
            timeout=30, backoff=LOOK,
        )
    finally:
        second.finish()
    refill = second.refill_process
    assert refill is not None and refill.wait(timeout=120) == 0
    after = _record(settings, second)
    assert after is not None and after.branch_id != spare.branch_id
    # the claimed spare went with its session; the refill left exactly one
    assert [b.id for b in _spares(settings)] == [after.branch_id]


def test_two_sessions_started_at_once_never_share_a_spare(settings: Settings) -> None:
    _, spare = _ready_spare(settings, "sp-b0")
    sessions = [BranchSession(settings, run_id=f"sp-b{i}") for i in (1, 2)]
    together = threading.Barrier(len(sessions))
    failures: list[BaseException] = []

    def start(session: BranchSession) -> None:
        together.wait()
        try:
            session.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        ids = [s.handle.id for s in sessions if s.handle is not None]
        assert len(set(ids)) == 2
        assert sorted(s.report.spare for s in sessions) == ["", "claimed"]
        assert spare.branch_id in ids
    finally:
        for session in sessions:
            session.finish()
    for session in sessions:
        refill = session.refill_process
        if refill is not None:
            refill.wait(timeout=120)
    # one refill made the next spare; the other found it made, or being made
    assert len(_spares(settings)) == 1


def test_a_spare_whose_template_changed_is_deleted_not_used(settings: Settings) -> None:
    first, spare = _ready_spare(settings, "sp-c1")
    slot = first._spares._slot
    assert slot is not None
    data = json.loads(slot.record_path.read_text())
    data["template_id"] = "br-some-other-template"  # as if the template had been rebuilt
    slot.record_path.write_text(json.dumps(data))

    second = _session(settings, "sp-c2")
    assert second.report.spare == ""
    assert all(spare.branch_id not in line for line in second.report.branches)
    assert spare.branch_id not in {b.id for b in _listed(settings)}


def test_spare_false_makes_none_and_claims_none(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, spare = _ready_spare(settings, "sp-d1")
    monkeypatch.setenv("CATHOUSE_SPARE", "false")
    off = load_settings(settings.project_root)
    assert off.spare is False and off.source_of("spare") == "environment CATHOUSE_SPARE"

    session = _session(off, "sp-d2")
    assert session.report.spare == "" and session.refill_process is None
    assert _record(settings, first) == spare  # still there, unclaimed
    assert [b.id for b in _spares(settings)] == [spare.branch_id]


def test_a_kept_claimed_spare_is_removed_by_down(settings: Settings) -> None:
    _, spare = _ready_spare(settings, "sp-g1")
    session = BranchSession(settings, run_id="sp-g2")
    try:
        session.start()
    finally:
        session.finish(keep=True)  # as a failed run keeps its branch
    assert session.report.spare == "claimed"
    assert session.report.kept == [f"harness/sp-g2/main ({spare.branch_id})"]
    refill = session.refill_process
    assert refill is not None and refill.wait(timeout=120) == 0

    code, _, err = cli("down", "harness/sp-g2/main", cwd=settings.project_root)
    assert code == 0, err
    assert spare.branch_id not in {b.id for b in _listed(settings)}


TEST_INTERRUPTED = """
import os
import signal


def test_interrupted(neon_branch):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the terminal sends it to pytest
"""


def test_ctrl_c_leaves_nothing_beyond_the_one_spare(settings: Settings, tmp_path: Path) -> None:
    first, _ = _ready_spare(settings, "sp-e0")
    tests = settings.project_root / "tests_interrupted"
    tests.mkdir(exist_ok=True)
    (tests / "test_interrupted.py").write_text(TEST_INTERRUPTED)
    env = {**os.environ, "CATHOUSE_RUN_ID": "sp-e1", "CI": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider",
         "-q", str(tests)],
        cwd=settings.project_root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]

    def one_spare_left() -> bool:
        record = _record(settings, first)
        left = [b for b in _listed(settings) if b.annotation.get(MARK_KIND) != "template"]
        return record is not None and [b.id for b in left] == [record.branch_id]

    # the refill child is the run's, detached: it outlives the run by a moment
    assert wait_until(one_spare_left, timeout=60, backoff=LOOK)


def test_a_spare_of_other_migrations_is_never_used_and_gc_removes_it(
    settings: Settings, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, old = _ready_spare(settings, "sp-f1")
    versions = settings.project_root / "auth-service" / "alembic" / "versions"
    revision = sorted(versions.glob("*.py"))[-1]
    revision.write_text(revision.read_text() + "\n# a change to a migration\n")
    changed = load_settings(settings.project_root)

    session = _session(changed, "sp-f2")
    assert session.report.template_reused is False and session.report.spare == ""
    assert all(old.branch_id not in line for line in session.report.branches)
    new = _record(changed, session)
    assert new is not None and new.fingerprint != old.fingerprint

    code, out, err = cli("gc", "--json", cwd=settings.project_root)
    assert code == 0, err
    report = json.loads(out)
    reasons = {c["id"]: c["reason"] for c in report["candidates"]}
    assert reasons[old.branch_id] == "spare of other migrations, made on this machine"
    assert old.branch_id in report["deleted"] and new.branch_id not in reasons
    # and the template it kept as a parent, in the same pass
    assert old.template_id in report["deleted"]
    assert [b.id for b in _spares(changed)] == [new.branch_id]


# ----------------------------------------------------------------------------- pure policy


NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
HOST = socket.gethostname()[:60]


def _branch(name: str, *, kind: str, fingerprint: str = "f1", host: str = HOST,
            parent_id: str | None = "br-template", expires: timedelta | None = timedelta(hours=1),
            branch_id: str | None = None) -> Branch:
    annotation = {MARK: "1", MARK_KIND: kind, MARK_FINGERPRINT: fingerprint, MARK_HOST: host}
    return Branch(
        id=branch_id or "br-" + name.replace("/", "-").replace(".", "-"), name=name,
        project_id="p", parent_id=parent_id,
        expires_at=NOW + expires if expires is not None else None, created_at=NOW,
    ).with_annotation(annotation)


def test_gc_chooses_only_this_machines_unclaimed_spares_of_other_migrations() -> None:
    template = _branch("harness/template/main/f0", kind="template", fingerprint="f0",
                       parent_id="br-main", expires=None, branch_id="br-template")
    old = _branch("harness/spare/h/f0-aaaaaa", kind="spare", fingerprint="f0")
    current = _branch("harness/spare/h/f1-bbbbbb", kind="spare", fingerprint="f1")
    elsewhere = _branch("harness/spare/h/f0-cccccc", kind="spare", fingerprint="f0", host="other")
    # claimed, renamed to its session's name: its run is alive, whatever its fingerprint
    claimed = _branch("harness/run-1/main", kind="spare", fingerprint="f0")
    found = [template, old, current, elsewhere, claimed]

    chosen = gc.candidates(found, current_fingerprint="f1", run=None, now=NOW)
    assert [b.id for b, _ in chosen] == [old.id]
    # without the spares of other hosts and the claimed one, the template is free too
    chosen = gc.candidates([template, old, current], current_fingerprint="f1", run=None, now=NOW)
    assert [b.id for b, _ in chosen] == [old.id]  # `current` is still its child
    chosen = gc.candidates([template, old], current_fingerprint="f1", run=None, now=NOW)
    assert [b.id for b, _ in chosen] == [old.id, template.id]
    # expired: gone whoever made it
    late = _branch("harness/spare/h/f1-dddddd", kind="spare", host="other", expires=timedelta(0))
    assert gc.candidates([late], current_fingerprint="f1", run=None, now=NOW) == [(late, "expired")]


def test_a_claimed_spare_is_used_only_as_the_listing_shows_it() -> None:
    spare = _branch("harness/spare/h/f1-aaaaaa", kind="spare")
    record = SpareRecord(branch_id=spare.id, name=spare.name, template_id="br-template",
                         fingerprint="f1", project_id="p", expires_at="2026-12-08T13:00:00Z")

    def why(*listed: Branch, template_id: str = "br-template", fingerprint: str = "f1") -> str | None:
        return why_not_usable(record, list(listed), template_id=template_id,
                              fingerprint=fingerprint, now=NOW)

    assert why(spare) is None
    assert why() == "it is gone"
    assert why_not_usable(record, None, template_id="br-template", fingerprint="f1") is not None
    assert why(spare, template_id="br-rebuilt") == "its template changed"
    assert why(replace(spare, parent_id="br-rebuilt")) == "its template changed"
    assert why(spare, fingerprint="f2") == "it holds other migrations"
    assert why(_branch(spare.name, kind="spare", host="other", branch_id=spare.id)) == (
        "another machine made it"
    )
    assert why(_branch(spare.name, kind="spare", expires=timedelta(seconds=30),
                       branch_id=spare.id)) == "it is about to expire"
    assert why(_branch("harness/run-1/main", kind="spare", branch_id=spare.id)) == (
        "it is no unclaimed spare"
    )


def test_gc_forgets_the_records_of_expired_spares_only(tmp_path: Path) -> None:
    spares = tmp_path / "spares"
    spares.mkdir(mode=0o700)
    for name, expires in (("old", "2026-12-08T11:59:00Z"), ("live", "2026-12-08T13:00:00Z")):
        record = SpareRecord(branch_id=f"br-{name}", name=f"harness/spare/h/{name}",
                             template_id="br-t", fingerprint="f1", project_id="p", expires_at=expires)
        (spares / f"{name}.json").write_text(json.dumps(asdict(record)))

    assert forget_expired(tmp_path, now=NOW) == [f"removed {spares / 'old.json'} (its spare expired)"]
    assert sorted(p.name for p in spares.glob("*.json")) == ["live.json"]
