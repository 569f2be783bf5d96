"""The state file: a home written by the previous server version (one role and one
database for the whole project, `default_branch_id`) loads as branch catalogs."""

from __future__ import annotations

import json
from pathlib import Path

from cathouse_harness.local.control.state import STATE_VERSION, load_state, state_path


def test_a_version_1_state_loads_with_a_catalog_per_branch(tmp_path: Path) -> None:
    stamp = "2026-01-01T00:00:00Z"

    def branch(branch_id: str, parent: str | None) -> dict[str, object]:
        physical = "br_" + branch_id[3:].replace("-", "_")
        return {
            "id": branch_id,
            "name": branch_id,
            "physical": physical,
            "parent_id": parent,
            "created_at": stamp,
            "updated_at": stamp,
            "current_state": "ready",
        }

    old = {
        "version": 1,
        "project_id": "calm-sea-12345678",
        "project_name": "cathouse-local",
        "created_at": stamp,
        "role_name": "cathouse_owner",
        "role_password": "secretpassword123",
        "database_name": "cathouse",
        "default_branch_id": "br-calm-sea-aaaaaaaa",
        "storage": "memory",
        "branches": {
            "br-calm-sea-aaaaaaaa": branch("br-calm-sea-aaaaaaaa", None),
            "br-odd-fog-bbbbbbbb": branch("br-odd-fog-bbbbbbbb", "br-calm-sea-aaaaaaaa"),
        },
        "endpoints": {},
        "operations": {},
    }
    state_path(tmp_path, "memory").write_text(json.dumps(old))
    state = load_state(tmp_path, "memory")
    assert state is not None and state.version == STATE_VERSION
    # the one password of the role then: its branches keep it, so its URLs stay valid
    assert {r.password for b in state.branches.values() for r in b.roles.values()} == {"secretpassword123"}
    assert state.default_branch.id == "br-calm-sea-aaaaaaaa"
    child = state.branches["br-odd-fog-bbbbbbbb"]
    assert list(child.roles) == ["cathouse_owner"]
    [db] = child.databases.values()
    assert (db.name, db.owner_name, db.physical) == ("cathouse", "cathouse_owner", "br_odd_fog_bbbbbbbb")
