"""migration_fingerprint: stable, location-independent, changed by any migration change."""

from __future__ import annotations

from pathlib import Path

from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import migration_fingerprint

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cathouse"


def fingerprint(project: Path) -> str:
    return migration_fingerprint(load_settings(project, environ={}))


def test_stable_and_short():
    first = fingerprint(EXAMPLE)
    assert first == fingerprint(EXAMPLE)
    assert len(first) == 16 and int(first, 16) >= 0


def test_same_sources_elsewhere_give_the_same_fingerprint(example_copy):
    assert fingerprint(example_copy) == fingerprint(EXAMPLE)


def test_editing_a_revision_changes_it(example_copy):
    before = fingerprint(example_copy)
    revision = example_copy / "catalog-service/alembic/versions/9e7f3b6c1d42_create_permissions.py"
    revision.write_text(revision.read_text() + "\n# a comment is a change too\n")
    assert fingerprint(example_copy) != before


def test_adding_a_revision_changes_it(example_copy, add_revision):
    before = fingerprint(example_copy)
    add_revision(example_copy, "installation-service", "f00000000001", "7d1b5f8a3e64", "pass")
    assert fingerprint(example_copy) != before


def test_env_ini_and_template_are_covered(example_copy):
    seen = {fingerprint(example_copy)}
    for relative in ("auth-service/alembic/env.py", "auth-service/alembic.ini",
                     "auth-service/alembic/script.py.mako"):
        path = example_copy / relative
        path.write_text(path.read_text() + "\n# changed\n")
        seen.add(fingerprint(example_copy))
    assert len(seen) == 4


def test_order_changes_it(example_copy):
    before = fingerprint(example_copy)
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text()
    catalog = text.index('[[tool.cathouse_harness.services]]\nname = "catalog-service"')
    installation = text.index('[[tool.cathouse_harness.services]]\nname = "installation-service"')
    proxy = text.index("# Reads every schema")
    pyproject.write_text(
        text[:catalog] + text[installation:proxy] + text[catalog:installation] + text[proxy:]
    )
    assert fingerprint(example_copy) != before


def test_bytecode_and_runtime_settings_do_not_change_it(example_copy):
    before = fingerprint(example_copy)
    cache = example_copy / "auth-service/alembic/versions/__pycache__"
    cache.mkdir()
    (cache / "3f1a9c2b7d10_create_users.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (example_copy / "auth-service/alembic/versions/stray.pyc").write_bytes(b"\x00")
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('branch_ttl = "15m"', 'branch_ttl = "1h"'))
    (example_copy / "auth-service/app/main.py").write_text("# app code is not a migration\n")
    assert fingerprint(example_copy) == before


def test_shared_env_code_named_in_migration_sources_is_covered(example_copy):
    before = fingerprint(example_copy)
    shared = example_copy / "cathouse_common" / "alembic_env.py"
    shared.write_text(shared.read_text() + "\n# shared migration code changed\n")
    assert fingerprint(example_copy) != before


def test_a_migration_source_that_matches_nothing_is_a_config_error(example_copy):
    import pytest
    from cathouse_harness.errors import ConfigError

    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("cathouse_common/alembic_env.py", "nowhere/*.py"))
    with pytest.raises(ConfigError, match="'nowhere/\\*.py' matches no file"):
        load_settings(example_copy, environ={})


def test_a_package_version_location_is_found_without_importing_it(example_copy):
    """`version_locations = extra.hist:versions`, a package in the service's directory that
    only `prepend_sys_path = .` puts on sys.path while Alembic runs: found where Python
    would find it (it is not importable from here), and its revisions are covered."""
    service = example_copy / "auth-service"
    versions = service / "extra" / "hist" / "versions"
    versions.mkdir(parents=True)
    for package in (service / "extra", service / "extra" / "hist"):
        (package / "__init__.py").write_text("")
    (versions / "x1_extra.py").write_text('revision = "x1"\ndown_revision = None\n')
    ini = service / "alembic.ini"
    ini.write_text(ini.read_text().replace(
        "path_separator = os",
        "path_separator = space\nprepend_sys_path = .\n"
        "version_locations = %(here)s/alembic/versions extra.hist:versions",
    ))
    before = fingerprint(example_copy)
    (versions / "x1_extra.py").write_text('revision = "x1"\ndown_revision = None\n# edited\n')
    assert fingerprint(example_copy) != before
