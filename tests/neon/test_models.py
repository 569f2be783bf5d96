"""Parsing Neon API v2 answers into models, in the shapes Neon's reference documents."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cathouse_harness.neon.models import (
    Branch,
    BranchCreated,
    ConnectionInfo,
    Endpoint,
    Operation,
    Project,
    Role,
    annotation_values,
)
from cathouse_harness.support.redact import scrub
from cathouse_harness.support.timestamps import format_time, parse_time

PASSWORD = "pw-models-test-only-4c2d"

CREATE_ANSWER = {
    "branch": {
        "id": "br-wispy-meadow-a5l2xq3k",
        "project_id": "shiny-wind-028834",
        "parent_id": "br-aged-salad-637688",
        "parent_lsn": "0/1E887C8",
        "name": "harness/run-1/gw0",
        "current_state": "init",
        "pending_state": "ready",
        "state_changed_at": "2025-03-04T10:00:00Z",
        "creation_source": "console",
        "primary": False,
        "default": False,
        "protected": False,
        "cpu_used_sec": 0,
        "compute_time_seconds": 0,
        "expires_at": "2025-03-05T10:00:00Z",
        "created_at": "2025-03-04T10:00:00Z",
        "updated_at": "2025-03-04T10:00:00.123456789Z",
        "init_source": "parent-data",
    },
    "endpoints": [
        {
            "host": "ep-cool-darkness-123456.us-east-2.aws.neon.tech",
            "id": "ep-cool-darkness-123456",
            "project_id": "shiny-wind-028834",
            "branch_id": "br-wispy-meadow-a5l2xq3k",
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 0.25,
            "region_id": "aws-us-east-2",
            "type": "read_write",
            "current_state": "init",
            "pending_state": "active",
            "settings": {},
            "pooler_enabled": False,
            "pooler_mode": "transaction",
            "disabled": False,
            "passwordless_access": True,
            "creation_source": "console",
            "created_at": "2025-03-04T10:00:00Z",
            "updated_at": "2025-03-04T10:00:00Z",
            "proxy_host": "us-east-2.aws.neon.tech",
            "suspend_timeout_seconds": 0,
            "provisioner": "k8s-neonvm",
        }
    ],
    "operations": [
        {
            "id": "22acbb37-209b-4b90-a39c-8460090e1329",
            "project_id": "shiny-wind-028834",
            "branch_id": "br-wispy-meadow-a5l2xq3k",
            "action": "create_branch",
            "status": "running",
            "failures_count": 0,
            "created_at": "2025-03-04T10:00:00Z",
            "updated_at": "2025-03-04T10:00:00Z",
            "total_duration_ms": 0,
        },
        {
            "id": "055b17e6-ffe3-47ab-b545-cfd7db6fd8b8",
            "project_id": "shiny-wind-028834",
            "branch_id": "br-wispy-meadow-a5l2xq3k",
            "endpoint_id": "ep-cool-darkness-123456",
            "action": "start_compute",
            "status": "scheduling",
            "failures_count": 0,
            "created_at": "2025-03-04T10:00:00Z",
            "updated_at": "2025-03-04T10:00:00Z",
            "total_duration_ms": 0,
        },
    ],
    "roles": [
        {
            "branch_id": "br-wispy-meadow-a5l2xq3k",
            "name": "cathouse_owner",
            "password": PASSWORD,
            "protected": False,
            "created_at": "2025-03-04T10:00:00Z",
            "updated_at": "2025-03-04T10:00:00Z",
        }
    ],
    "databases": [
        {
            "id": 2886,
            "branch_id": "br-wispy-meadow-a5l2xq3k",
            "name": "cathouse",
            "owner_name": "cathouse_owner",
            "created_at": "2025-03-04T10:00:00Z",
            "updated_at": "2025-03-04T10:00:00Z",
        }
    ],
    "connection_uris": [
        {
            "connection_uri": (
                f"postgresql://cathouse_owner:{PASSWORD}@ep-cool-darkness-123456"
                ".us-east-2.aws.neon.tech/cathouse?sslmode=require"
            ),
            "connection_parameters": {
                "database": "cathouse",
                "password": PASSWORD,
                "role": "cathouse_owner",
                "host": "ep-cool-darkness-123456.us-east-2.aws.neon.tech",
                "pooler_host": "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech",
            },
        }
    ],
}


def test_create_answer_parses_every_part():
    created = BranchCreated.from_api(CREATE_ANSWER)

    b = created.branch
    assert (b.id, b.name, b.project_id) == (
        "br-wispy-meadow-a5l2xq3k",
        "harness/run-1/gw0",
        "shiny-wind-028834",
    )
    assert b.parent_id == "br-aged-salad-637688" and b.parent_lsn == "0/1E887C8"
    assert (b.current_state, b.pending_state, b.ready) == ("init", "ready", False)
    assert b.expires_at == datetime(2025, 3, 5, 10, tzinfo=UTC)
    # nanoseconds are cut to microseconds instead of failing the parse
    assert b.updated_at == datetime(2025, 3, 4, 10, 0, 0, 123456, tzinfo=UTC)
    assert b.default is False and b.protected is False
    assert b.raw["init_source"] == "parent-data"

    (ep,) = created.endpoints
    assert ep.id == "ep-cool-darkness-123456" and ep.type == "read_write"
    assert ep.branch_id == b.id and not ep.usable and ep.pooler_mode == "transaction"

    assert [op.action for op in created.operations] == ["create_branch", "start_compute"]
    assert all(op.pending for op in created.operations)
    assert created.operations[1].endpoint_id == ep.id

    (role,) = created.roles
    assert role.name == "cathouse_owner" and role.password is not None
    assert role.password.reveal() == PASSWORD
    (db,) = created.databases
    assert (db.name, db.owner_name, db.id) == ("cathouse", "cathouse_owner", 2886)

    (conn,) = created.connection_uris
    assert conn.database == "cathouse" and conn.role == "cathouse_owner"
    assert conn.host == ep.host
    assert conn.pooler_host == "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"
    assert conn.password is not None and conn.password.reveal() == PASSWORD
    assert conn.pooled_uri is not None
    assert conn.pooled_uri.reveal() == (
        f"postgresql://cathouse_owner:{PASSWORD}@ep-cool-darkness-123456-pooler"
        ".us-east-2.aws.neon.tech/cathouse?sslmode=require"
    )
    assert created.recovered is False


def test_reprs_and_scrub_hide_passwords():
    created = BranchCreated.from_api(CREATE_ANSWER)
    for text in (
        repr(created),
        str(created),
        repr(created.connection_uris[0]),
        repr(created.roles[0]),
        repr(created.connection_uris[0].uri),
    ):
        assert PASSWORD not in text
    assert "uri=Secret('***')" in repr(created.connection_uris[0])
    assert "password" not in repr(created.roles[0])
    # parsing registered the password, so it is scrubbed wherever it turns up
    assert scrub(f"oops {PASSWORD} leaked") == "oops *** leaked"


def test_missing_optional_and_extra_fields_are_tolerated():
    branch = Branch.from_api({"id": "br-a", "name": "a", "project_id": "p", "brand_new": 1})
    assert branch.parent_id is None and branch.expires_at is None
    assert branch.annotation == {} and branch.default is False
    endpoint = Endpoint.from_api({"id": "ep-a"})
    assert endpoint.type == "read_write" and endpoint.host == "" and not endpoint.usable
    created = BranchCreated.from_api({"branch": {"id": "br-a", "name": "a"}})
    assert created.endpoints == () and created.connection_uris == ()
    project = Project.from_api({"id": "p", "name": "cathouse", "pg_version": 17})
    assert project.pg_version == 17
    role = Role.from_api({"name": "r", "branch_id": "br-a"})
    assert role.password is None


def test_primary_is_the_old_name_of_default():
    assert Branch.from_api({"id": "br-m", "primary": True}).default is True
    assert Branch.from_api({"id": "br-m", "primary": True, "default": False}).default is False


def test_list_answer_annotations_are_merged_by_branch_id():
    answer: dict[str, Any] = {
        "branches": [
            {"id": "br-main", "name": "main", "project_id": "p", "default": True},
            {"id": "br-h1", "name": "harness/r/gw0", "project_id": "p", "parent_id": "br-main"},
        ],
        "annotations": {
            "br-h1": {
                "object": {"type": "console/branch", "id": "br-h1"},
                "value": {"cathouse-harness": "run-1", "owner": "ci"},
                "created_at": "2025-03-04T10:00:00Z",
                "updated_at": "2025-03-04T10:00:00Z",
            }
        },
        "pagination": {"sort_by": "updated_at", "sort_order": "DESC"},
    }
    branches = [Branch.from_api(b, answer["annotations"].get(b["id"])) for b in answer["branches"]]
    assert branches[0].annotation == {} and branches[0].default is True
    assert dict(branches[1].annotation) == {"cathouse-harness": "run-1", "owner": "ci"}
    with pytest.raises(TypeError):
        branches[1].annotation["x"] = "y"  # type: ignore[index]


def test_annotation_values_accepts_plain_maps_and_ignores_junk():
    assert dict(annotation_values({"a": "1"})) == {"a": "1"}
    assert annotation_values({"object": {"id": "br-x"}}) == {}
    assert annotation_values(None) == {}
    assert annotation_values(["a"]) == {}


@pytest.mark.parametrize(
    ("status", "done", "failed", "pending"),
    [
        ("scheduling", False, False, True),
        ("running", False, False, True),
        ("cancelling", False, False, True),
        ("finished", True, False, False),
        ("skipped", True, False, False),
        ("failed", False, True, False),
        ("error", False, True, False),
        ("cancelled", False, True, False),
        ("something_new", False, False, True),
    ],
)
def test_operation_states(status, done, failed, pending):
    op = Operation.from_api({"id": "o", "project_id": "p", "action": "a", "status": status})
    assert (op.done, op.failed, op.pending) == (done, failed, pending)


def test_operation_error_fields():
    op = Operation.from_api(
        {
            "id": "op-1",
            "project_id": "p",
            "branch_id": "br-1",
            "action": "start_compute",
            "status": "failed",
            "failures_count": "3",
            "error": "compute did not start",
        }
    )
    assert op.failures_count == 3 and op.error == "compute did not start" and op.failed


def test_connection_info_falls_back_to_the_uri():
    pw = "p%40ss-W0rd-long"  # percent-encoded '@' inside the URI
    info = ConnectionInfo.from_api(
        {"connection_uri": f"postgresql://app_user:{pw}@ep-x-1.example.net:5432/appdb"}
    )
    assert (info.role, info.database, info.host) == ("app_user", "appdb", "ep-x-1.example.net")
    assert info.password is not None and info.password.reveal() == "p@ss-W0rd-long"
    assert info.pooled_uri is None
    assert "p@ss-W0rd-long" not in repr(info) and pw not in repr(info)


def test_time_round_trip():
    assert parse_time("2025-03-04T10:00:00+02:00") == datetime(2025, 3, 4, 8, tzinfo=UTC)
    assert parse_time("not a time") is None and parse_time(None) is None
    when = datetime(2025, 3, 4, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(when) == "2025-03-04T10:30:00Z"
    assert format_time(datetime(2025, 3, 4, 10, 0, 0, 500000)) == "2025-03-04T10:00:00.500000Z"


def test_models_are_frozen_values():
    created = BranchCreated.from_api(CREATE_ANSWER)
    again = BranchCreated.from_api(copy.deepcopy(CREATE_ANSWER))
    assert created == again
    with pytest.raises(AttributeError):
        created.branch.name = "x"  # type: ignore[misc]


def test_models_are_hashable_so_they_fit_in_sets():
    created = BranchCreated.from_api(CREATE_ANSWER)
    assert len({created.branch, created.branch}) == 1
    assert len(set(created.operations)) == 2


def _info(uri: str, **params: object) -> ConnectionInfo:
    return ConnectionInfo.from_api({"connection_uri": uri, "connection_parameters": params})


def test_pooled_uri_is_built_from_pooler_host_on_its_default_port():
    # Neon names no ports: the pooled URL is the pooler host on 5432, whatever port the
    # direct URI carried (the local server's fallback listeners have kernel-picked ones)
    pw = "local-Pw-77aa11"
    info = _info(
        f"postgresql://cathouse:{pw}@127.0.0.1:54011/cathouse?sslmode=require",
        database="cathouse", role="cathouse", password=pw, host="127.4.5.6", pooler_host="127.7.8.9",
    )
    assert info.pooled_uri is not None
    assert info.pooled_uri.reveal() == f"postgresql://cathouse:{pw}@127.7.8.9/cathouse?sslmode=require"
    neon = _info("postgresql://u:p@ep-a-1.eu.aws.neon.tech/db", pooler_host="ep-a-1-pooler.eu.aws.neon.tech")
    assert neon.pooled_uri is not None
    assert neon.pooled_uri.reveal() == "postgresql://u:p@ep-a-1-pooler.eu.aws.neon.tech/db"


def test_pooled_uri_needs_a_pooler_host_other_than_the_direct_one_or_a_port():
    # the local server without addresses of its own: both hosts 127.0.0.1, no ports
    # named, so the pooled URL cannot be built (the API's pooled connection_uri can)
    same = _info("postgresql://u:p@127.0.0.1:54011/db", host="127.0.0.1", pooler_host="127.0.0.1")
    assert same.pooled_uri is None
    # our own entry from two URIs carries the pooled one's port
    ported = _info("postgresql://u:p@127.0.0.1:54011/db", pooler_host="127.0.0.1", pooler_port=54012)
    assert ported.pooled_uri is not None
    assert ported.pooled_uri.reveal() == "postgresql://u:p@127.0.0.1:54012/db"
