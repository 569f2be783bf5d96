"""The migration checks a project runs in its suite: positive and negative cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import MigrationError
from cathouse_harness.migrate.all_services import (
    check_order,
    check_round_trip,
    check_schema_isolation,
    check_single_head,
    current_revisions,
    migrate_all,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cathouse"
HEADS = {
    "auth-service": "8b4e6d0a5c21",
    "catalog-service": "9e7f3b6c1d42",
    "installation-service": "7d1b5f8a3e64",
}


def example():
    return load_settings(EXAMPLE, environ={})


def test_single_head_holds_for_the_example():
    assert check_single_head(example()) == HEADS


def test_single_head_fails_on_a_branched_history(example_copy, add_revision):
    add_revision(example_copy, "auth-service", "b2a4c6e8f0a1", "3f1a9c2b7d10",
                 'op.add_column("users", sa.Column("x", sa.Integer), schema="auth")')
    with pytest.raises(MigrationError) as caught:
        check_single_head(load_settings(example_copy, environ={}))
    assert caught.value.service == "auth-service"
    assert "has 2 heads (8b4e6d0a5c21, b2a4c6e8f0a1)" in str(caught.value)
    assert "alembic merge heads" in str(caught.value)


def test_round_trip_holds_for_the_example(fresh_database_url):
    counts = check_round_trip(example(), fresh_database_url)
    assert set(counts) == set(HEADS) and all(n > 5 for n in counts.values())
    assert current_revisions(example(), fresh_database_url) == HEADS


def test_round_trip_fails_when_a_downgrade_leaves_something(fresh_database_url, example_copy,
                                                           add_revision):
    add_revision(
        example_copy, "catalog-service", "d0d0d0d0d0d1", HEADS["catalog-service"],
        'op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), schema="catalog")',
        "pass  # forgot to drop catalog.tags",
    )
    with pytest.raises(MigrationError) as caught:
        check_round_trip(load_settings(example_copy, environ={}), fresh_database_url)
    assert caught.value.service == "catalog-service"
    assert "downgrade to base left" in str(caught.value)
    assert "catalog.tags" in str(caught.value)


def test_round_trip_fails_when_a_downgrade_breaks(fresh_database_url, example_copy, add_revision):
    add_revision(
        example_copy, "installation-service", "d0d0d0d0d0d2", HEADS["installation-service"],
        'op.add_column("installations", sa.Column("note", sa.Text), schema="installation")',
        'op.drop_column("installations", "nope", schema="installation")',
    )
    with pytest.raises(MigrationError) as caught:
        check_round_trip(load_settings(example_copy, environ={}), fresh_database_url)
    assert caught.value.service == "installation-service"
    assert caught.value.revision == "d0d0d0d0d0d2"
    assert "downgrade to base failed" in str(caught.value)


def test_schema_isolation_holds_for_the_example(fresh_database_url):
    created = check_schema_isolation(example(), fresh_database_url)
    assert set(created) == set(HEADS) and all(n > 0 for n in created.values())


def test_schema_isolation_names_an_object_outside_the_schema(fresh_database_url, example_copy,
                                                            add_revision):
    add_revision(
        example_copy, "catalog-service", "e1e1e1e1e1e1", HEADS["catalog-service"],
        # no schema=: lands in public through the search path
        'op.create_table("catalog_audit", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("catalog_audit")',
    )
    with pytest.raises(MigrationError) as caught:
        check_schema_isolation(load_settings(example_copy, environ={}), fresh_database_url)
    error = caught.value
    assert error.service == "catalog-service"
    assert error.revision == "e1e1e1e1e1e1"
    assert "table public.catalog_audit" in str(error)
    assert "outside its schema catalog" in str(error)


def test_schema_isolation_catches_changes_to_another_services_table(
    fresh_database_url, example_copy, add_revision
):
    add_revision(
        example_copy, "installation-service", "e1e1e1e1e1e2", HEADS["installation-service"],
        'op.add_column("users", sa.Column("installs", sa.Integer), schema="auth")',
        'op.drop_column("users", "installs", schema="auth")',
    )
    with pytest.raises(MigrationError) as caught:
        check_schema_isolation(load_settings(example_copy, environ={}), fresh_database_url)
    assert caught.value.service == "installation-service"
    assert "column auth.users.installs" in str(caught.value)


def test_schema_isolation_needs_an_empty_database(fresh_database_url):
    migrate_all(example(), fresh_database_url)
    with pytest.raises(MigrationError, match="needs a database where no service has migrated"):
        check_schema_isolation(example(), fresh_database_url)


def test_order_holds_for_the_example(fresh_database_url):
    assert check_order(example(), fresh_database_url) == {
        "auth-service": (),
        "catalog-service": ("auth-service",),
        "installation-service": ("auth-service", "catalog-service"),
    }


def test_order_fails_naming_the_missing_dependency(fresh_database_url, example_copy):
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text()
    # auth last: catalog-service's first revision needs auth.users
    start = text.index('[[tool.cathouse_harness.services]]\nname = "auth-service"')
    end = text.index('[[tool.cathouse_harness.services]]\nname = "catalog-service"')
    proxy = text.index("# Reads every schema")
    moved = text[:start] + text[end:proxy] + text[start:end] + text[proxy:]
    pyproject.write_text(moved)
    with pytest.raises(MigrationError) as caught:
        check_order(load_settings(example_copy, environ={}), fresh_database_url)
    assert caught.value.service == "catalog-service"
    assert caught.value.revision == "5c2d8e1f4a30"
    assert ("catalog-service revision 5c2d8e1f4a30 needs auth.users, which auth-service "
            "creates; put auth-service before catalog-service") in str(caught.value)
