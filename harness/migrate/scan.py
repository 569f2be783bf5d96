"""What an Alembic setup says about itself, read without running any of it.

`cathouse-branch init` needs each setup's script directory, the schema its env.py keeps
the version table in, the histories its revision files form, and the schemas they create
tables in and point foreign keys at. Running env.py would connect to whatever database it
names, so Python files are parsed (ast), never imported; the configuration is read with
Alembic's own `Config`, so `%(here)s`, `[tool.alembic]` and the path separators mean what
they mean to `alembic`, and the revisions with Alembic's own `ScriptDirectory` (which
files count, recursive version locations, heads, branch labels), fed each file's header
as ast reads it instead of the imported module.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import re
import tomllib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# `package.module:path` — a directory inside a package; Alembic imports the package to
# find it, init looks where Python would and never imports it (_resource_dir)
_RESOURCE = re.compile(r"^[A-Za-z_][\w.]*:")


@dataclass(frozen=True)
class AlembicSetup:
    ini: Path
    config_from: str  # where script_location was found: "alembic.ini" or "pyproject.toml [tool.alembic]"
    script_location: str  # as written, %(here)s substituted
    script_dir: Path | None  # None for a package resource init cannot find without importing
    version_dirs: tuple[Path, ...]
    recursive: bool = False  # recursive_version_locations
    # version_locations entries that name no directory init can find, as written
    missing_versions: tuple[str, ...] = ()
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
    version_tables: tuple[Found, ...] = ()  # every version_table= value, resolved
    unresolved_tables: tuple[str, ...] = ()
    configures: bool = False  # env.py itself calls context.configure (not code elsewhere)
    # what env.py takes from a running web app, e.g. "flask.current_app" (Flask-Migrate's
    # env.py): `alembic` run on its own has no app, so it fails before migrating anything
    needs_app: str | None = None

    def version_table(self) -> tuple[str | None, str] | None:
        """(schema, table) of the version table, None for the connection's search path;
        None when init cannot tell (env.py hands off to other code, or computes it)."""
        if self.error or not self.configures or self.unresolved or self.unresolved_tables:
            return None
        schemas = {f.value for f in self.version_table_schemas}
        tables = {f.value for f in self.version_tables}
        if len(schemas) > 1 or len(tables) > 1:
            return None
        return (next(iter(schemas), None), next(iter(tables), "alembic_version"))


@dataclass(frozen=True)
class ForeignKeyRef:
    schema: str
    target: str  # as written: "auth.users.id", or "auth" for referent_schema=
    file: Path


@dataclass(frozen=True)
class History:
    """The revisions Alembic finds for one setup, and the graph they form."""

    files: tuple[Path, ...]  # the revision files, in no particular order
    heads: tuple[str, ...]
    bases: tuple[str, ...]  # one per independent history
    branch_labels: tuple[str, ...]
    unreadable: tuple[Path, ...] = ()  # files whose header ast cannot read
    error: str | None = None  # what Alembic said about the graph (a missing down_revision…)


@dataclass(frozen=True)
class RevisionFacts:
    files: int
    table_schemas: tuple[str | None, ...]  # one per op.create_table: schema=, None without
    references: tuple[ForeignKeyRef, ...]
    unreadable: tuple[Path, ...]


def read_setup(config_file: Path, root: Path | None = None) -> AlembicSetup | Skipped:
    """The setup `config_file` configures: an alembic.ini (with `[tool.alembic]` of a
    pyproject.toml beside it), or a pyproject.toml alone.

    Relative paths are taken from the file's directory, or from the project `root` when
    script_location exists only from there (a project that runs `alembic -c svc/alembic.ini`
    from its root)."""
    from alembic.config import Config
    from alembic.util import CommandError

    ini = config_file
    if config_file.suffix == ".toml":
        config = Config(None, toml_file=str(config_file))
    else:
        toml = ini.parent / "pyproject.toml"
        config = Config(str(ini), toml_file=str(toml) if toml.is_file() else None)
    try:
        with warnings.catch_warnings():  # Alembic's deprecation notes are not ours to show
            warnings.simplefilter("ignore")
            in_ini = config_file.suffix != ".toml" and config.file_config.has_option(
                config.config_ini_section, "script_location"
            )
            location = config.get_alembic_option("script_location")
            versions = config.get_version_locations_list()
            recursive = config.get_alembic_boolean_option("recursive_version_locations")
            prepend = config.get_prepend_sys_paths_list()
            sections = [] if config_file.suffix == ".toml" else config.file_config.sections()
            named = [name for name in sections if name != config.config_ini_section
                     and config.file_config.has_option(name, "script_location")]
    except (configparser.Error, tomllib.TOMLDecodeError, CommandError, OSError, UnicodeDecodeError,
            ValueError) as exc:
        return Skipped(ini, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    if not isinstance(location, str) or not location.strip():
        if named:  # `alembic --name core`: one ini, a history per section
            return Skipped(ini, (
                f"has no [alembic] script_location, but sections {', '.join(named)} have one "
                "(`alembic --name …`); the harness runs an ini's [alembic] section: give each "
                "history an ini (or a [tool.alembic] table) of its own"
            ))
        return Skipped(
            ini, "has no script_location (in [alembic] or a pyproject.toml [tool.alembic] beside it)"
        )
    location = location.strip()
    directory = _run_directory(ini.parent, location, root)
    packages = package_bases(directory, root, prepend or ())
    script_dir = resolve_location(location, directory, packages)
    missing: list[str] = []
    if versions:
        version_dirs: list[Path] = []
        for entry in (v.strip() for v in versions if v.strip()):
            found = resolve_location(entry, directory, packages)
            if found is None or not found.is_dir():
                missing.append(entry)
            else:
                version_dirs.append(found)
    else:
        version_dirs = [script_dir / "versions"] if script_dir else []
    return AlembicSetup(
        ini=ini,
        config_from=ini.name if in_ini else "pyproject.toml [tool.alembic]",
        script_location=location,
        script_dir=script_dir,
        version_dirs=tuple(version_dirs),
        recursive=recursive,
        missing_versions=tuple(missing),
        directory=directory,
    )


def _run_directory(ini_dir: Path, location: str, root: Path | None) -> Path:
    """Where the setup's users run `alembic`: the ini's directory, unless a relative
    script_location exists only when taken from the project root."""
    path = Path(location)
    if root is None or path.is_absolute() or (ini_dir / path).is_dir() or _RESOURCE.match(location):
        return ini_dir
    return root if (root / path).is_dir() else ini_dir


def package_bases(directory: Path, root: Path | None, prepend: Sequence[str]) -> tuple[Path, ...]:
    """Where a package named by a resource may be: the run directory (on sys.path when
    `alembic` runs), prepend_sys_path, the project root and its `src/`."""
    bases = [directory, *(Path(p) if Path(p).is_absolute() else directory / p for p in prepend if p)]
    if root is not None:
        bases += [root, root / "src"]
    return tuple(dict.fromkeys(b.resolve() for b in bases))


def resolve_location(location: str, directory: Path, packages: Sequence[Path]) -> Path | None:
    """The directory `location` names: a path (a relative one taken from `directory`, as
    Alembic takes it from the working directory), or a package resource `pkg.sub:dir`
    found without importing the package."""
    path = Path(location)
    if _RESOURCE.match(location) and not (directory / path).exists():
        return _resource_dir(location, packages)
    return (path if path.is_absolute() else directory / path).resolve()


def _resource_dir(resource: str, bases: Sequence[Path]) -> Path | None:
    """`pkg.sub:dir/versions` as a directory: the package looked up as Python would find
    it (project directories first, then the installed packages' finders, which locate a
    top-level package without running it), never imported."""
    package, _, inner = resource.partition(":")
    parts = package.split(".")
    roots = [base.joinpath(*parts) for base in bases]
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or ()) if spec else ():
        roots.append(Path(location).joinpath(*parts[1:]))
    for root in roots:
        candidate = root / inner if inner else root
        if root.is_dir() and candidate.exists():
            return candidate.resolve()
    return None


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


# (module, name) pairs that only resolve inside a running app: Flask-Migrate's env.py
# template reads the URL and the metadata off flask.current_app
_APP_BOUND = (("flask", "current_app"),)


def _needs_app(tree: ast.Module) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in _APP_BOUND:
                    return f"{node.module}.{alias.name}"
    return None


def env_facts(env_py: Path) -> EnvFacts:
    """Every `version_table_schema=` env.py passes to `context.configure`."""
    tree = _parse(env_py)
    if tree is None:
        reason = "does not exist" if not env_py.exists() else "cannot be parsed"
        return EnvFacts((), (), error=f"{env_py.name} {reason}")
    constants = _constants(tree)
    found_by_key: dict[str, list[Found]] = {"version_table_schema": [], "version_table": []}
    unresolved_by_key: dict[str, list[str]] = {"version_table_schema": [], "version_table": []}
    configures = False
    for name, call in _calls(tree):
        configures = configures or name == "configure"
        for key in found_by_key:
            expr = _keyword(call, key)
            if expr is None:
                continue
            found = _text(expr, constants)
            if found is not None:
                found_by_key[key].append(Found(found.value, f"{key}={found.how}"))
            elif not (isinstance(expr, ast.Constant) and expr.value is None):
                unresolved_by_key[key].append(ast.unparse(expr))
    return EnvFacts(
        tuple(found_by_key["version_table_schema"]), tuple(unresolved_by_key["version_table_schema"]),
        version_tables=tuple(found_by_key["version_table"]),
        unresolved_tables=tuple(unresolved_by_key["version_table"]),
        configures=configures,
        needs_app=_needs_app(tree),
    )


_HEADER_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")


def _header(path: Path) -> SimpleNamespace | None:
    """What Alembic reads off an imported revision module (revision, down_revision,
    branch_labels, depends_on, the docstring), read off its syntax tree instead."""
    tree = _parse(path)
    if tree is None:
        return None
    values: dict[str, Any] = {"down_revision": None, "__doc__": ast.get_docstring(tree)}
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in _HEADER_NAMES and value is not None:
            try:
                values[target.id] = ast.literal_eval(value)
            except ValueError:
                return None
    return SimpleNamespace(**values) if "revision" in values else None


@dataclass(frozen=True)
class Links:
    """What a history's revision files name: their own ids and branch labels, and each
    (revision, name) whose down_revision or depends_on names none of them — a revision or
    label of another history, in the same version table (a plugin's first revision that
    depends on the core's)."""

    names: frozenset[str]
    outside: tuple[tuple[str, str], ...]


def _named(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else value if isinstance(value, (list, tuple)) else ()
    # "core@head" names the branch label core
    return tuple(str(item).partition("@")[0] for item in items)


def revision_links(revision_files: Iterable[Path]) -> Links:
    headers = [h for h in map(_header, revision_files) if h is not None]
    names = {str(h.revision) for h in headers}
    names.update(label for h in headers for label in _named(getattr(h, "branch_labels", None)))
    outside = [
        (str(h.revision), target)
        for h in headers
        for target in (*_named(h.down_revision), *_named(getattr(h, "depends_on", None)))
        if target not in names
    ]
    return Links(frozenset(names), tuple(outside))


def read_history(setup: AlembicSetup) -> History:
    """The setup's revisions as Alembic's ScriptDirectory sees them, each file's header read
    with ast (Alembic would import it, running whatever the file does at import)."""
    from alembic.script import Script, ScriptDirectory
    from alembic.script.base import _only_source_rev_file
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    unreadable: list[Path] = []
    files: list[Path] = []

    class ParsedScripts(ScriptDirectory):
        def _load_revisions(self) -> Iterator[Script]:
            seen: set[Path] = set()
            for directory in self._version_locations:
                if not directory.is_dir():
                    continue
                for path in Script._list_py_dir(self, directory):
                    path = path.resolve()
                    if path in seen or not _only_source_rev_file.match(path.name):
                        continue
                    seen.add(path)
                    module = _header(path)
                    if module is None:
                        unreadable.append(path)
                        continue
                    files.append(path)
                    yield Script(module, module.revision, path)  # type: ignore[arg-type]

    if setup.script_dir is None or not setup.script_dir.is_dir() or not setup.version_dirs:
        return History((), (), (), ())
    scripts = ParsedScripts(
        setup.script_dir,
        version_locations=[str(d) for d in setup.version_dirs],
        recursive_version_locations=setup.recursive,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            revisions = list(scripts.walk_revisions("base", "heads"))
            heads = tuple(scripts.get_heads())
            bases = tuple(scripts.get_bases())
    except (CommandError, RevisionError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError) and exc.args:  # str() of a KeyError is the bare key
            first = f"revision {exc.args[0]} is named by one of its revisions but is not among them"
        return History(tuple(files), (), (), (), tuple(unreadable), error=first)
    labels = sorted({label for rev in revisions for label in rev.branch_labels})
    return History(tuple(files), heads, bases, tuple(labels), tuple(unreadable))


def revision_facts(revision_files: Iterable[Path]) -> RevisionFacts:
    """The schemas a service's revision files create tables in and reference."""
    files = sorted(set(revision_files))
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
