"""The layout ARCHITECTURE.md describes, held: packages by concern, listed for setuptools
under their import names, small, with near-empty `__init__` files, and an engine that
never imports pytest."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"cathouse_harness": "harness", "pytest_cathouse_harness": "conftest_plugin"}
# none exempt from the size limit since local/ was laid out by concern (#24); the top
# package carries the error types and the version, local/ its lazy exports, neon/ a
# guard that must run before httpx loads
LARGE_OR_EXPORTING: set[str] = set()
INIT_WITH_CODE = {
    "cathouse_harness", "cathouse_harness.local", "cathouse_harness.neon", "pytest_cathouse_harness",
}


def _packages_on_disk() -> dict[str, Path]:
    found = {}
    for import_name, folder in FOLDERS.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found[".".join((import_name, *parts))] = init.parent
    return found


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_under_its_import_name() -> None:
    listed = set(_setuptools()["packages"])
    assert listed == set(_packages_on_disk())
    assert _setuptools()["package-dir"] == FOLDERS


def test_entry_points_name_the_import_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"cathouse_harness": "pytest_cathouse_harness.plugin"}
    assert project["scripts"]["cathouse-branch"] == "cathouse_harness.cli.commands:main"


def test_packages_by_concern_stay_small() -> None:
    for name, folder in _packages_on_disk().items():
        if name in LARGE_OR_EXPORTING:
            continue
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        # about a dozen: a reader takes in a listing of that size at a glance
        assert len(modules) <= 13, f"{name} holds {len(modules)} modules"


def test_init_files_hold_a_docstring_and_nothing_else() -> None:
    for name, folder in _packages_on_disk().items():
        if name in INIT_WITH_CODE:
            continue
        body = ast.parse((folder / "__init__.py").read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{name}/__init__.py has code"


def test_the_engine_never_imports_pytest() -> None:
    for path in (REPO / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not any(n == "pytest" or n.startswith(("pytest.", "_pytest")) for n in names), path
