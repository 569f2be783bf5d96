"""What an Alembic setup says about itself, read without running any of it.

`cathouse-branch init` needs each setup's script directory, the schema its env.py keeps
the version table in, and the schemas its revision files create tables in and point
foreign keys at. Running env.py would connect to whatever database it names, so Python
files are parsed (ast), never imported; the configuration is read with Alembic's own
`Config`, so `%(here)s`, `[tool.alembic]` and the path separators mean what they mean
to `alembic`.
"""

from __future__ import annotations

import ast
import configparser
import re
import tomllib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# `package.module:path` — a script directory inside an importable package; finding it
# would mean importing the user's package, which init does not do
_RESOURCE = re.compile(r"^[A-Za-z_][\w.]*:")


@dataclass(frozen=True)
class AlembicSetup:
    ini: Path
    config_from: str  # where script_location was found: "alembic.ini" or "pyproject.toml [tool.alembic]"
    script_location: str  # as written, %(here)s substituted
    script_dir: Path | None  # None for a package resource
    version_dirs: tuple[Path, ...]
    # where relative paths resolve, i.e. where its users run `alembic`: the ini's directory,
    # or the project root for an ini whose script_location is written from there
    directory: Path | None = None

    @property
    def env_py(self) -> Path | None:
        return self.script_dir / "env.py" if self.script_dir else None


@dataclass(frozen=True)
class Skipped:
    """An alembic.ini that is not a usable Alembic configuration, and why."""

    ini: Path
    reason: str


@dataclass(frozen=True)
class Found:
    """A schema name read from source, and the words that say where it came from."""

    value: str
    how: str


@dataclass(frozen=True)
class EnvFacts:
    version_table_schemas: tuple[Found, ...]  # every value env.py passes, resolved
    unresolved: tuple[str, ...]  # expressions init cannot evaluate without running env.py
    error: str | None = None


@dataclass(frozen=True)
class ForeignKeyRef:
    schema: str
    target: str  # as written: "auth.users.id", or "auth" for referent_schema=
    file: Path


@dataclass(frozen=True)
class RevisionFacts:
    files: int
    table_schemas: tuple[str | None, ...]  # one per op.create_table: schema=, None without
    references: tuple[ForeignKeyRef, ...]
    unreadable: tuple[Path, ...]


def read_setup(ini: Path, root: Path | None = None) -> AlembicSetup | Skipped:
    """The setup `ini` configures, with `[tool.alembic]` of a pyproject.toml beside it.

    A relative script_location is looked for from the ini's directory, then from `root`
    (a project that runs `alembic -c svc/alembic.ini` from its root)."""
    from alembic.config import Config
    from alembic.util import CommandError

    toml = ini.parent / "pyproject.toml"
    config = Config(str(ini), toml_file=str(toml) if toml.is_file() else None)
    try:
        with warnings.catch_warnings():  # Alembic's deprecation notes are not ours to show
            warnings.simplefilter("ignore")
            in_ini = config.file_config.has_option(config.config_ini_section, "script_location")
            location = config.get_alembic_option("script_location")
            versions = config.get_version_locations_list()
    except (configparser.Error, tomllib.TOMLDecodeError, CommandError, OSError, UnicodeDecodeError,
            ValueError) as exc:
        return Skipped(ini, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    if not isinstance(location, str) or not location.strip():
        return Skipped(
            ini, "has no script_location (in [alembic] or a pyproject.toml [tool.alembic] beside it)"
        )
    location = location.strip()
    directory = _run_directory(ini, location, root)
    script_dir = _resolve(directory, location)
    if script_dir is None:
        version_dirs: tuple[Path, ...] = ()
    elif versions:
        version_dirs = tuple(
            d for d in (_resolve(directory, v.strip()) for v in versions if v.strip()) if d
        )
    else:
        version_dirs = (script_dir / "versions",)
    return AlembicSetup(
        ini=ini,
        config_from=ini.name if in_ini else "pyproject.toml [tool.alembic]",
        script_location=location,
        script_dir=script_dir,
        version_dirs=version_dirs,
        directory=directory,
    )


def _run_directory(ini: Path, location: str, root: Path | None) -> Path:
    """The ini's directory, unless script_location only exists taken from `root`."""
    resolved = _resolve(ini.parent, location)
    if resolved is None or resolved.is_dir() or root is None:
        return ini.parent
    from_root = _resolve(root, location)
    return root if from_root is not None and from_root.is_dir() else ini.parent


def _resolve(directory: Path, location: str) -> Path | None:
    # A relative path is taken from where the service's Alembic runs (Alembic itself uses
    # the working directory).
    if _RESOURCE.match(location) and not Path(location).exists():
        return None
    path = Path(location)
    return (path if path.is_absolute() else directory / path).resolve()


# -- Python sources, parsed -------------------------------------------------------------


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None


def _constants(tree: ast.Module) -> dict[str, str]:
    """Names assigned one string anywhere in the file (`SCHEMA = "auth"`, also inside
    upgrade()); a name assigned anything else as well is left out."""
    found: dict[str, str] = {}
    ambiguous: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        text = value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None
        for target in targets:
            if isinstance(target, ast.Name):
                if text is None or found.get(target.id, text) != text:
                    ambiguous.add(target.id)
                found.setdefault(target.id, text or "")
    return {name: text for name, text in found.items() if name not in ambiguous}


def _text(node: ast.expr | None, constants: dict[str, str]) -> Found | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return Found(node.value, f"{node.value!r}")
    if isinstance(node, ast.Name) and node.id in constants:
        return Found(constants[node.id], f"{node.id} (= {constants[node.id]!r})")
    return None


def _calls(tree: ast.Module) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            yield name, node


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def env_facts(env_py: Path) -> EnvFacts:
    """Every `version_table_schema=` env.py passes to `context.configure`."""
    tree = _parse(env_py)
    if tree is None:
        reason = "does not exist" if not env_py.exists() else "cannot be parsed"
        return EnvFacts((), (), error=f"{env_py.name} {reason}")
    constants = _constants(tree)
    values: list[Found] = []
    unresolved: list[str] = []
    for _, call in _calls(tree):
        expr = _keyword(call, "version_table_schema")
        if expr is None:
            continue
        found = _text(expr, constants)
        if found is not None:
            values.append(Found(found.value, f"version_table_schema={found.how}"))
        elif not (isinstance(expr, ast.Constant) and expr.value is None):
            unresolved.append(ast.unparse(expr))
    return EnvFacts(tuple(values), tuple(unresolved))


def revision_facts(version_dirs: Iterable[Path]) -> RevisionFacts:
    """The schemas a service's revision files create tables in and reference."""
    files = sorted(
        {p for d in version_dirs if d.is_dir() for p in d.rglob("*.py") if "__pycache__" not in p.parts}
    )
    schemas: list[str | None] = []
    references: list[ForeignKeyRef] = []
    unreadable: list[Path] = []
    for path in files:
        tree = _parse(path)
        if tree is None:
            unreadable.append(path)
            continue
        constants = _constants(tree)
        for name, call in _calls(tree):
            if name == "create_table":
                found = _text(_keyword(call, "schema"), constants)
                schemas.append(found.value if found else None)
            references.extend(_references(name, call, constants, path))
    return RevisionFacts(len(files), tuple(schemas), tuple(references), tuple(unreadable))


def _references(name: str, call: ast.Call, constants: dict[str, str], path: Path) -> Iterator[ForeignKeyRef]:
    targets: list[ast.expr] = []
    if name == "ForeignKey":
        column = call.args[0] if call.args else _keyword(call, "column")
        targets = [column] if column is not None else []
    elif name == "ForeignKeyConstraint":
        columns = call.args[1] if len(call.args) > 1 else _keyword(call, "refcolumns")
        if isinstance(columns, ast.List | ast.Tuple):
            targets = list(columns.elts)
    for target in targets:
        found = _text(target, constants)
        # "schema.table.column": two dots; "table.column" stays in the search path
        if found is not None and found.value.count(".") == 2:
            yield ForeignKeyRef(found.value.split(".", 1)[0], found.value, path)
    referent = _text(_keyword(call, "referent_schema"), constants)
    if referent is not None:
        yield ForeignKeyRef(referent.value, f"referent_schema={referent.value!r}", path)
