"""pytest-asyncio's settings for a project that has none of its own.

The harness depends on pytest-asyncio (its async fixtures need it), so a project gets it
with us whether or not it asked. Out of the box it runs in strict mode, where a plain
`async def` test fails ("async def functions are not natively supported") and an async
fixture must be declared with `pytest_asyncio.fixture`; and it warns at start-up that
`asyncio_default_fixture_loop_scope` is unset, which a `-W error` project (or a sync one
that never used asyncio) fails on. So, only for a setting the project does not make
(in its pytest configuration file or with `-o`): a project that configures the harness
runs in auto mode (what the README's first async test needs), and the loop-scope notice
is not shown (what it warns about, the fixture's own scope, is the behaviour kept). A
project that chose either keeps its choice.
"""

from __future__ import annotations

import configparser
import tomllib
import warnings
from pathlib import Path

import pytest

MODE = "asyncio_mode"
LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


def adopt_asyncio_defaults(config: pytest.Config, *, configured: bool) -> None:
    """Before pytest-asyncio's own pytest_configure (ours runs first)."""
    if not config.pluginmanager.has_plugin("asyncio"):
        return
    if configured and getattr(config.option, MODE, None) is None and not project_sets(config, MODE):
        config.option.asyncio_mode = "auto"  # what pytest-asyncio reads before its ini value
    if not project_sets(config, LOOP_SCOPE):
        # pytest applies -W while plugins configure; a filter added now lasts until then
        warnings.filterwarnings(
            "ignore", message=f'The configuration option "{LOOP_SCOPE}" is unset',
            category=pytest.PytestDeprecationWarning,
        )


def project_sets(config: pytest.Config, name: str) -> bool:
    """Whether the project's pytest configuration file, or `-o`, sets `name`."""
    overrides = getattr(config.option, "override_ini", None) or []
    if any(item.split("=", 1)[0].strip() == name for item in overrides):
        return True
    path = config.inipath
    if path is None:
        return False
    try:
        return name in _ini_values(path)
    except (OSError, ValueError, configparser.Error):
        return False  # pytest read it; a file we cannot read says nothing about `name`


def _ini_values(path: Path) -> set[str]:
    if path.suffix == ".toml":
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        tables = [data.get("pytest", {})]  # pytest.toml
        tool = data.get("tool", {}).get("pytest", {})
        tables += [tool, tool.get("ini_options", {})]
        return {key for table in tables if isinstance(table, dict) for key in table}
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return {key for section in ("pytest", "tool:pytest") if parser.has_section(section)
            for key in parser.options(section)}
