"""A core and two plugins in one version table (issue #28): what Alembic runs, the
harness runs — `heads`, branch labels, depends_on across histories — and doctor and
migrate say where a database stands against every head."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from cathouse_harness.branching.fingerprint import migration_fingerprint, service_sources
from cathouse_harness.cli.commands import main as cli_main
from cathouse_harness.cli.doctor import check_revisions
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.migrate.all_services import current_revisions, migrate_all, standings
from cathouse_harness.migrate.environment import script_directory
from cathouse_harness.migrate.run_memo import once_per_run

from tests.adoption import _plugin_host as host
from tests.adoption.conftest import run_plugin, tables_of

ALL_HEADS = ",".join(host.HEADS)


def settings_of(root: Path):  # type: ignore[no-untyped-def]
    return load_settings(root, environ={})


def test_target_heads_migrates_every_history(tmp_path: Path, fresh_database_url: str) -> None:
    root = host.build(tmp_path / "server", target='"heads"')
    results = migrate_all(settings_of(root), fresh_database_url)
    assert [(r.before, r.after) for r in results] == [(None, ALL_HEADS)]
    assert tables_of(fresh_database_url) >= host.TABLES
    again = migrate_all(settings_of(root), fresh_database_url)
    assert [(r.changed, r.standing) for r in again] == [(False, None)]


def test_default_target_with_several_heads_is_one_line(tmp_path: Path, fresh_database_url: str) -> None:
    root = host.build(tmp_path / "server")
    with pytest.raises(ConfigError) as caught:
        migrate_all(settings_of(root), fresh_database_url)
    line = str(caught.value)
    assert "\n" not in line and caught.value.exit_code == 2
    assert line.startswith("services[server].target (from ")
    assert "3 heads (a1a1a1a1a1a1, b1b1b1b1b1b1, c2c2c2c2c2c2)" in line
    assert 'set target = "heads"' in line
    assert "env.py" not in line  # nothing about how env.py finds its database
    assert not any(t.startswith(f"{host.SCHEMA}.") for t in tables_of(fresh_database_url))


def test_target_head_set_on_purpose_gets_the_same_line_from_alembic_s_refusal(
    tmp_path: Path, fresh_database_url: str
) -> None:
    root = host.build(tmp_path / "server", target='"head"')
    with pytest.raises(ConfigError) as caught:
        migrate_all(settings_of(root), fresh_database_url)
    line = str(caught.value)
    assert line.startswith("services[server].target (from ") and "\n" not in line
    assert "3 heads (a1a1a1a1a1a1, b1b1b1b1b1b1, c2c2c2c2c2c2)" in line and "env.py" not in line


def test_default_target_follows_the_project_s_own_upgrade_heads(
    tmp_path: Path, fresh_database_url: str
) -> None:
    root = host.build(tmp_path / "server")
    host.write(root / "scripts" / "migrate.sh", "#!/bin/sh\nexec alembic upgrade heads\n")
    results = migrate_all(settings_of(root), fresh_database_url)
    assert [(r.after, r.target) for r in results] == [(ALL_HEADS, ("heads",))]


def test_a_list_of_branch_labels_follows_depends_on(tmp_path: Path, fresh_database_url: str) -> None:
    # alpha depends on the core's first revision; beta is left out
    root = host.build(tmp_path / "server", target='["alpha@head"]')
    [result] = migrate_all(settings_of(root), fresh_database_url)
    assert result.after == "a1a1a1a1a1a1"  # Alembic keeps c1 implied by the dependency
    tables = tables_of(fresh_database_url)
    assert {"app.core_items", "app.alpha_notes"} <= tables and "app.beta_things" not in tables
    # each target in turn, as `alembic upgrade alpha@head && alembic upgrade core@head`
    both = host.build(tmp_path / "both", target='["alpha@head", "core@head"]')
    [result] = migrate_all(settings_of(both), fresh_database_url)
    assert (result.before, result.after) == ("a1a1a1a1a1a1", "a1a1a1a1a1a1,c2c2c2c2c2c2")


def test_fingerprint_covers_every_version_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = host.build(tmp_path / "server", target='"heads"')
    settings = settings_of(root)
    with once_per_run():
        ours = service_sources(settings.services[0]).version_dirs
        # read from elsewhere, the relative locations still name the project's directories
        assert len(script_directory(settings.services[0]).get_heads()) == 3
    # the locations Alembic itself reads, run where the project's users run it
    monkeypatch.chdir(root)
    theirs = ScriptDirectory.from_config(Config(str(root / "alembic.ini")))._version_locations  # noqa: SLF001
    assert list(ours) == [Path(p) for p in theirs] and len(ours) == 3
    before = migration_fingerprint(settings)
    beta = root / "plugins" / "beta" / "versions" / "b1b1b1b1b1b1_revision.py"
    beta.write_text(beta.read_text() + "\n# changed\n")
    assert migration_fingerprint(settings) != before
    changed_target = settings_of(host.build(tmp_path / "other", target='["core@head"]'))
    same_files = settings_of(host.build(tmp_path / "other2", target='"heads"'))
    assert migration_fingerprint(changed_target) != migration_fingerprint(same_files)


def test_doctor_and_migrate_name_ahead_behind_and_diverged(
    tmp_path: Path, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads_root = host.build(tmp_path / "heads", target='"heads"')
    core_root = host.build(tmp_path / "core", target='["core@head"]')
    mixed_root = host.build(tmp_path / "mixed", target='["core@head", "beta@head"]')

    # only the core migrated: behind every head
    migrate_all(settings_of(core_root), fresh_database_url)
    found = standings(settings_of(heads_root), fresh_database_url)["server"]
    assert (found.state, found.missing) == ("behind", ("a1a1a1a1a1a1", "b1b1b1b1b1b1"))
    check = check_revisions(settings_of(heads_root), fresh_database_url)
    assert (check.status, check.fix) == ("fail", "cathouse-branch migrate")
    assert check.detail.startswith("server behind: at c2c2c2c2c2c2; not yet a1a1a1a1a1a1, b1b1b1b1b1b1")

    # migrated to every head (`cathouse-branch migrate --target heads`): at its target...
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    args = ["migrate", "--project-dir", str(core_root)]
    assert cli_main([*args, "--target", "heads"], out=out, err=err) == 0, err.getvalue()
    assert current_revisions(settings_of(core_root), fresh_database_url) == {"server": ALL_HEADS}
    assert check_revisions(settings_of(heads_root), fresh_database_url).status == "ok"
    # ...and ahead of a target of the core alone, not behind
    check = check_revisions(settings_of(core_root), fresh_database_url)
    assert check.status == "fail"
    assert check.detail == ("server ahead: at a1a1a1a1a1a1,b1b1b1b1b1b1,c2c2c2c2c2c2; past the "
                            "target with a1a1a1a1a1a1, b1b1b1b1b1b1 (target c2c2c2c2c2c2)")
    out = io.StringIO()
    assert cli_main(args, out=out, err=err) == 0, err.getvalue()
    assert out.getvalue().splitlines()[0] == (
        f"server: at head {ALL_HEADS}, nothing to do (ahead of its target c2c2c2c2c2c2: "
        "past the target with a1a1a1a1a1a1, b1b1b1b1b1b1)"
    )

    # against a target of core and beta, every head is ahead by alpha's
    found = standings(settings_of(mixed_root), fresh_database_url)["server"]
    assert (found.state, found.beyond) == ("ahead", ("a1a1a1a1a1a1",))


def test_diverged_and_revisions_no_file_has(
    tmp_path: Path, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha_root = host.build(tmp_path / "alpha", target='"alpha@head"')
    mixed_root = host.build(tmp_path / "mixed", target='["core@head", "beta@head"]')
    migrate_all(settings_of(alpha_root), fresh_database_url)
    found = standings(settings_of(mixed_root), fresh_database_url)["server"]
    assert (found.state, found.missing, found.beyond) == (
        "diverged", ("b1b1b1b1b1b1", "c2c2c2c2c2c2"), ("a1a1a1a1a1a1",)
    )
    check = check_revisions(settings_of(mixed_root), fresh_database_url)
    assert check.detail.startswith("server diverged: ") and "reset" in check.fix

    # a revision the scripts do not have (migrated by newer code): ahead, and migrate says so
    newer = host.build(tmp_path / "newer", target='"heads"')
    host.revision(newer / "plugins" / "beta" / "versions", "b2b2b2b2b2b2", "pass", "pass",
                  down="b1b1b1b1b1b1")
    migrate_all(settings_of(newer), fresh_database_url)
    found = standings(settings_of(mixed_root), fresh_database_url)["server"]
    assert (found.state, found.unknown) == ("ahead", ("b2b2b2b2b2b2",))
    err = io.StringIO()
    monkeypatch.setenv("MIGRATION_DATABASE_URL", fresh_database_url)
    code = cli_main(["migrate", "--project-dir", str(mixed_root)],
                    out=io.StringIO(), err=err)
    lines = [line for line in err.getvalue().splitlines() if "b2b2b2b2b2b2" in line]
    assert code == 1 and len(lines) == 1, err.getvalue()
    assert "which none of its revision files has" in lines[0] and "ahead" in lines[0]


# through the plugin at -n 0 and -n 2 with `heads`: test_plugin_host_icu.py (the same shape
# with its ICU collation, on a system PostgreSQL)


def test_plugin_with_several_heads_and_no_target_is_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.build(pytester.path)
    pytester.makepyfile(test_plugin_host=host.plugin_test())
    result = run_plugin(pytester, monkeypatch, "several-heads-default", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.outlines + result.errlines
    lines = [line for line in output if "3 heads" in line]
    assert len(lines) == 1, "\n".join(output)
    assert 'set target = "heads"' in lines[0] and "Multiple head revisions" in lines[0]
    assert not any("env.py" in line for line in output), "\n".join(output)


def test_the_one_head_check_follows_the_target(tmp_path: Path) -> None:
    """check_single_head: several heads are the point of `target = "heads"` (every head
    named); each branch label of a list must have one; the default target still wants one
    head and says how to merge."""
    from cathouse_harness.errors import MigrationError
    from cathouse_harness.migrate.checks import check_single_head

    with once_per_run():
        heads = check_single_head(settings_of(host.build(tmp_path / "all", target='"heads"')))
    assert heads == {"server": ALL_HEADS}
    with once_per_run():
        labels = check_single_head(
            settings_of(host.build(tmp_path / "labels", target='["alpha@head", "core@head"]'))
        )
    assert labels == {"server": "a1a1a1a1a1a1,c2c2c2c2c2c2"}
    with once_per_run(), pytest.raises(MigrationError) as caught:
        check_single_head(settings_of(host.build(tmp_path / "default")))
    assert "has 3 heads" in str(caught.value) and "alembic merge heads" in str(caught.value)


def test_init_joins_rather_than_clashes_a_plugin_ini_that_depends_on_the_core(tmp_path: Path) -> None:
    """The core's alembic.ini lists only the core (the project joins its plugins at run
    time, from entry points); a plugin keeps an alembic.ini of its own for making its
    revisions, whose first depends on the core's. As a service of its own it would stop at
    the core's revision: init leaves it out and says how to join it, not that its schema
    clashes."""
    from cathouse_harness.cli.project_init import propose

    root = host.build(tmp_path / "server")
    host.write(root / "alembic.ini", host.INI.replace(" plugins/alpha/versions plugins/beta/versions", ""))
    host.write(root / "plugins" / "alpha" / "alembic.ini", "[alembic]\nscript_location = .\n")
    (root / "pyproject.toml").write_text('[project]\nname = "plugin-host"\nversion = "0"\n')
    proposal = propose(root)
    assert [s.alembic_ini for s in proposal.services] == ["alembic.ini"]
    [note] = [n for n in proposal.notes if n.startswith("plugins/alpha/alembic.ini left out")]
    assert "its revision a1a1a1a1a1a1 depends on c1c1c1c1c1c1 of alembic.ini's history" in note
    assert "add plugins/alpha/versions to alembic.ini's version_locations" in note
    assert 'target = "heads"' in note and "schema" not in note
