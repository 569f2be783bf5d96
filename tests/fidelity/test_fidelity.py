"""The fidelity check (tests/fidelity/check.py) as a test, where its pinned clients are
already installed: neonctl, Neon's Python and TypeScript SDKs, and (where their code is
in the cache) the steps of Neon's GitHub actions, unchanged and pointed at
`cathouse-branch emulator` by configuration only, have no call that fails other than the
known differences. The suite never installs them (that would contact a registry):
`python -m tests.fidelity.check --install` does, once."""

from __future__ import annotations

import pytest

from tests.fidelity import actions
from tests.fidelity.check import DEFAULT_CACHE, KNOWN, check, clients, failures, missing


def test_neons_clients_work_against_the_emulator_unchanged() -> None:
    gone = missing(clients(DEFAULT_CACHE))
    if gone:
        pytest.skip(f"{', '.join(gone)} not installed in {DEFAULT_CACHE} "
                    "(python -m tests.fidelity.check --install, which uses npm and PyPI)")
    lines: list[str] = []
    outcomes = check(DEFAULT_CACHE, out=lines.append)
    report = "\n".join(lines)
    assert not failures(outcomes), report
    called = {(o.client, o.call) for o in outcomes}
    assert ("neonctl", "connection-string main@<timestamp>") in called, report
    assert ("neon-api", "branch_delete") in called, report  # the SDK's driver ran to its end
    assert ("ts-sdk", "deleteProjectBranch") in called, report
    assert ("neonctl", "snapshots delete") in called and ("ts-sdk", "deleteSnapshot") in called, report
    if not actions.missing_actions(DEFAULT_CACHE / "actions", DEFAULT_CACHE):
        assert ("actions", "delete-branch-action") in called, report
    # a call that starts to work against the emulator leaves the known list
    assert all(not o.ok for o in outcomes if (o.client, o.call) in KNOWN), report
