"""Names and URLs of xdist workers' databases (`cathouse_harness.xdist.worker_databases`); the copies
themselves are exercised through the plugin in tests/plugin/test_xdist.py."""

from __future__ import annotations

from cathouse_harness.branching.lifecycle import BranchHandle
from cathouse_harness.db.urls import endpoint_of
from cathouse_harness.support.redact import Secret, scrub
from cathouse_harness.xdist.worker_databases import worker_database_name, worker_handle


def test_a_worker_database_is_the_configured_name_and_the_worker_within_postgres_limit() -> None:
    assert worker_database_name("cathouse", "gw0") == "cathouse_gw0"
    long = worker_database_name("d" * 70, "gw12")
    assert len(long.encode()) == 63 and long.endswith("_gw12")
    # a multi-byte name is cut between characters, never inside one
    assert worker_database_name("é" * 40, "gw3").endswith("é_gw3")


def test_a_worker_handle_names_its_database_and_keeps_everything_else() -> None:
    shared = BranchHandle(
        project_id="p", id="br-a", name="harness/r/workers", parent_id="br-t", endpoint_id="ep-a",
        direct_url=Secret("postgresql://u:s3cret-pw@ep-a.example:5432/cathouse?sslmode=require"),
        pooled_url=Secret("postgresql://u:s3cret-pw@ep-a-pooler.example/cathouse?sslmode=require"),
    )
    handle = worker_handle(shared, "cathouse_gw1")
    assert (handle.id, handle.endpoint_id, handle.database) == ("br-a", "ep-a", "cathouse_gw1")
    assert str(endpoint_of(str(handle.direct_url))) == "ep-a.example:5432/cathouse_gw1"
    assert str(handle.pooled_url).endswith("@ep-a-pooler.example/cathouse_gw1?sslmode=require")
    assert "s3cret-pw" not in scrub(f"{handle!r} {handle.direct_url.reveal()}")
