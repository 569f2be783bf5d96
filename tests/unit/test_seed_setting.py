"""`seed` as a setting and as part of the migration fingerprint (files read, nothing imported)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.branching.fingerprint import migration_fingerprint
from cathouse_harness.config.seed import SeedCall
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError


def _settings(root: Path, **table: Any):  # type: ignore[no-untyped-def]
    return load_settings(root, table=(table, "test table"), environ={}, use_dotenv=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "a.sql").write_text("SELECT 1;\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "fill.py").write_text("def load(connection):\n    pass\n")
    return tmp_path


def test_files_then_callables_in_the_order_given(root: Path) -> None:
    (root / "sql" / "b.sql").write_text("SELECT 2;\n")
    seed = _settings(root, seed=["pkg.fill:load", "sql/b.sql", "sql/a.sql"]).seed
    assert seed.sql == (root / "sql" / "b.sql", root / "sql" / "a.sql")
    assert seed.calls == (SeedCall("pkg.fill", "load"),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sql/a.sql", "seed (from test table): must be a list of strings"),
        (["sql/none.sql"], "seed (from test table): 'sql/none.sql' is neither a file under "),
        (["pkg.fill:"], "seed (from test table): 'pkg.fill:' is neither a file under "),
    ],
)
def test_a_bad_value_names_the_setting_and_its_source(root: Path, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _settings(root, seed=value)
    assert str(raised.value).startswith(message)
    assert raised.value.exit_code == 2


def test_the_fingerprint_covers_the_seed_and_an_import_does_not_change_it(root: Path) -> None:
    plain = migration_fingerprint(_settings(root))
    assert migration_fingerprint(_settings(root, seed=[])) == plain  # old templates stay valid
    seeded = _settings(root, seed=["sql/a.sql", "pkg.fill:load"])
    first = migration_fingerprint(seeded)
    assert first != plain

    # what building the template does to the tree (bytecode beside the module) is no edit
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("pkg.fill")
    finally:
        sys.path.remove(str(root))
        for name in ("pkg.fill", "pkg"):
            sys.modules.pop(name, None)
    assert migration_fingerprint(seeded) == first

    (root / "sql" / "a.sql").write_text("SELECT 3;\n")
    second = migration_fingerprint(seeded)
    (root / "pkg" / "fill.py").write_text("def load(connection):\n    return 1\n")
    third = migration_fingerprint(seeded)
    assert len({first, second, third}) == 3


def test_a_callable_whose_module_cannot_be_found_is_a_config_error(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"^seed \(from test table\): cannot find module 'pkg.none'"):
        migration_fingerprint(_settings(root, seed=["pkg.none:load"]))
