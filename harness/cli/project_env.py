"""What the project reads to find its database, proposed as `[tool.cathouse_harness.env]`
lines that point those names at the branch, and the URL driver it uses (issue #23).

The names come from where the project itself gets them: subscripts of `os.environ`, its
`get`, and `getenv` calls in its Python files (env.py and settings modules), pydantic
`BaseSettings` fields with their `env_prefix` and `env_nested_delimiter`, and the keys of
its `.env` files. Python files are parsed with `ast`, never imported: importing a settings
module runs it, and that may connect somewhere. A name is proposed only when it says what
part of a database address it is (POSTGRES_SERVER, DATABASE__PORT, DB_PASSWORD, …), or its
.env value is a PostgreSQL URL.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tokens of a name that place it among database settings
_DB_TOKENS = frozenset({
    "db", "database", "databases", "postgres", "postgresql", "pg", "psql", "sql", "sqlalchemy", "alembic",
})
# the last token of a name -> what of the branch it gets
_ROLES = {
    **dict.fromkeys(("host", "hostname", "server", "addr", "address"), "host"),
    "port": "port",
    **dict.fromkeys(("user", "username", "login"), "user"),
    **dict.fromkeys(("password", "pass", "passwd", "pwd"), "password"),
    **dict.fromkeys(("name", "dbname", "db", "database"), "database"),
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    **dict.fromkeys(("url", "uri", "dsn"), "url"),
}
# libpq's own names say what they are without a separator
_LIBPQ = {
    "PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGPASSWORD": "password",
    "PGDATABASE": "database", "PGSSLMODE": "sslmode", "PGSSLROOTCERT": "sslrootcert",
}
# a URL meant for migrations goes to the direct endpoint, not the pooled one
_DIRECT_TOKENS = frozenset({"migration", "migrations", "migrate", "alembic", "direct"})
# pydantic types that are database URLs whatever the field is called; a generic URL type
# (AnyUrl, AnyHttpUrl) is one only when the name says so (`BACKEND_CORS_ORIGINS: list[AnyUrl]`
# in both public FastAPI templates tried is not)
_URL_TYPES = frozenset({"PostgresDsn", "PostgreSQLDsn", "MultiHostUrl"})
_SCHEME_DRIVER = {
    "postgresql+asyncpg": "asyncpg", "postgresql+psycopg": "psycopg", "postgresql+psycopg2": "psycopg2",
    "postgresql": "libpq", "postgres": "libpq",
}
_DRIVER_DEPENDENCY = (
    ("asyncpg", re.compile(r"\basyncpg\b")),
    ("psycopg2", re.compile(r"\bpsycopg2\b")),
    ("psycopg", re.compile(r"\bpsycopg(?![\w])(?!2)")),
)
_ASYNC_ENV = re.compile(r"\basync_engine_from_config\b|\bcreate_async_engine\b|\bAsyncEngine\b")
ENV_FILE = re.compile(r"^\.env(\..+)?$|^.+\.env$|^env\.(example|sample|template)$")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYTHON_HINTS = ("environ", "getenv", "Settings", "BaseModel")
MAX_PYTHON_FILES = 3000


@dataclass(frozen=True)
class EnvLine:
    name: str
    template: str
    found: tuple[str, ...]  # where the project reads it: "settings.py:14 (Settings.database.hostname)"

    @property
    def where(self) -> str:
        more = f" and {len(self.found) - 1} more" if len(self.found) > 1 else ""
        return f"found in {self.found[0]}{more}"


@dataclass(frozen=True)
class EnvProposal:
    lines: tuple[EnvLine, ...] = ()
    url_driver: str | None = None
    driver_from: str = ""
    notes: tuple[str, ...] = field(default=())

    def driver_lines(self) -> list[str]:
        if self.url_driver is None:
            return []
        return [f"url_driver = {json.dumps(self.url_driver)}  # {_comment(self.driver_from)}"]

    def table_lines(self, table: str) -> list[str]:
        if not self.lines:
            return []
        return ["", f"[{table}]", *(
            f"{line.name} = {json.dumps(line.template)}  # {_comment(line.where)}" for line in self.lines
        )]

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": {line.name: line.template for line in self.lines},
            "env_found": {line.name: list(line.found) for line in self.lines},
            "url_driver": self.url_driver,
            "url_driver_from": self.driver_from or None,
            "env_notes": list(self.notes),
        }


def _comment(text: str) -> str:
    return " ".join(text.split())  # a TOML comment ends at the line's end


@dataclass(frozen=True)
class _Read:
    """One name the project reads, where, and what its .env value says (if any)."""

    name: str
    where: str
    role: str | None = None  # known from the source (a PostgresDsn field), else from the name
    scheme_driver: str | None = None  # the driver form of its .env value


# -- names: what part of a database address a name is -----------------------------------------


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"_+", name.lower()) if t]


def role_of(name: str, *, context: bool = False) -> str | None:
    """host, port, user, password, database, sslmode, sslrootcert, url or direct_url for a
    name that reads as a database setting; None otherwise. `context`: the name's owner
    (a settings class about the database) places it among database settings already."""
    if name.upper() in _LIBPQ:
        return _LIBPQ[name.upper()]
    tokens = _tokens(name)
    if not tokens:
        return None
    last = tokens[-1]
    before = tokens[:-1]
    in_db = context or any(t in _DB_TOKENS or t.startswith("postgres") for t in before)
    if last in ("db", "database"):  # POSTGRES_DB, but not a bare DATABASE (a URL? a flag?)
        return "database" if in_db else None
    role = _ROLES.get(last)
    if role is None or not in_db:
        return None
    if role == "url" and any(t in _DIRECT_TOKENS for t in tokens):
        return "direct_url"
    return role


def _template(role: str, driver: str | None) -> str:
    if role in ("url", "direct_url"):
        return f"{{{role}:{driver}}}" if driver else f"{{{role}}}"
    return f"{{{role}}}"


# -- where the project reads names ------------------------------------------------------------


def walk_files(project_dir: Path, skip: Callable[[Path, str], bool]) -> Iterator[Path]:
    for root, dirs, files in os.walk(project_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not skip(here, d))
        for name in sorted(files):
            yield here / name


def _shown(path: Path, project_dir: Path) -> str:
    return path.relative_to(project_dir).as_posix() if path.is_relative_to(project_dir) else str(path)


def _parse(path: Path) -> ast.Module | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not any(hint in text for hint in _PYTHON_HINTS):
        return None
    try:
        return ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError):
        return None


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def environ_reads(tree: ast.Module, shown: str) -> Iterator[_Read]:
    """Names read off `environ` (a subscript, `.get`, `.setdefault`, `.pop`) or by `getenv`."""
    for node in ast.walk(tree):
        name = None
        if not isinstance(node, ast.expr):
            continue
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = _string(node.slice)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            method = func.attr if isinstance(func, ast.Attribute) else None
            on_environ = method in ("get", "setdefault", "pop") and _is_environ(func.value)  # type: ignore[attr-defined]
            if on_environ or method == "getenv" or (isinstance(func, ast.Name) and func.id == "getenv"):
                name = _string(node.args[0])
        if name:
            yield _Read(name, f"{shown}:{node.lineno}")


# -- pydantic settings -------------------------------------------------------------------------


@dataclass
class _Class:
    node: ast.ClassDef
    shown: str  # the file, as shown


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def _config(node: ast.ClassDef) -> dict[str, Any]:
    """env_prefix, env_nested_delimiter and case_sensitive as the class sets them:
    `model_config = SettingsConfigDict(...)` or `{...}`, or pydantic v1's `class Config`."""
    found: dict[str, Any] = {}
    for item in node.body:
        if isinstance(item, ast.Assign | ast.AnnAssign):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            if any(isinstance(t, ast.Name) and t.id == "model_config" for t in targets) and item.value:
                value = item.value
                if isinstance(value, ast.Call):
                    for keyword in value.keywords:
                        if keyword.arg:
                            found[keyword.arg] = _literal(keyword.value)
                elif isinstance(value, ast.Dict):
                    for key, val in zip(value.keys, value.values, strict=True):
                        if key is not None and _string(key):
                            found[str(_string(key))] = _literal(val)
        elif isinstance(item, ast.ClassDef) and item.name == "Config":
            for inner in item.body:
                if isinstance(inner, ast.Assign):
                    for target in inner.targets:
                        if isinstance(target, ast.Name):
                            found[target.id] = _literal(inner.value)
    return found


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _annotation_names(node: ast.expr | None) -> list[str]:
    """Class names an annotation mentions: `DatabaseSettings`, `Optional[Db]`, `Db | None`."""
    if node is None:
        return []
    return [n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
            if isinstance(n, ast.Name | ast.Attribute)]


def _alias(value: ast.expr | None) -> str | None:
    """`Field(alias="X")`, `Field(validation_alias="X")` or v1's `Field(env="X")`: the name
    pydantic reads instead of prefix + field."""
    if not isinstance(value, ast.Call):
        return None
    for keyword in value.keywords:
        if keyword.arg in ("validation_alias", "alias", "env"):
            text = _string(keyword.value)
            if text:
                return text
            if isinstance(keyword.value, ast.Call) and keyword.value.args:  # AliasChoices("A", "B")
                return _string(keyword.value.args[0])
    return None


def _fields(node: ast.ClassDef) -> Iterator[ast.AnnAssign]:
    for item in node.body:
        if (
            isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and not item.target.id.startswith("_")
            and item.target.id != "model_config"
            and "ClassVar" not in _annotation_names(item.annotation)
        ):
            yield item


class _Settings:
    """Every class in the project's files; which are pydantic settings, their config
    (inherited through the project's own base classes), and the names they read."""

    def __init__(self, classes: dict[str, _Class]) -> None:
        self.classes = classes
        self.settings: set[str] = set()
        changed = True
        while changed:  # a class deriving from a settings class of the project is one too
            changed = False
            for name, cls in classes.items():
                if name not in self.settings and any(
                    b == "BaseSettings" or b in self.settings for b in _base_names(cls.node)
                ):
                    self.settings.add(name)
                    changed = True

    def config(self, name: str, depth: int = 0) -> dict[str, Any]:
        cls = self.classes.get(name)
        if cls is None or depth > 8:
            return {}
        merged: dict[str, Any] = {}
        for base in _base_names(cls.node):
            merged.update(self.config(base, depth + 1))
        merged.update(_config(cls.node))
        return merged

    def nested(self) -> set[str]:
        """Settings classes some other class uses as a field's type."""
        used: set[str] = set()
        for cls in self.classes.values():
            for item in _fields(cls.node):
                used.update(n for n in _annotation_names(item.annotation) if n in self.settings)
        return used

    def reads(self) -> Iterator[_Read]:
        nested = self.nested()
        for name in sorted(self.settings):
            config = self.config(name)
            if name in nested and not config.get("env_prefix"):
                continue  # read through the class that holds it
            yield from self._names(name, config, str(config.get("env_prefix") or ""), name, 0)

    def _names(
        self, name: str, config: dict[str, Any], prefix: str, path: str, depth: int
    ) -> Iterator[_Read]:
        cls = self.classes[name]
        delimiter = config.get("env_nested_delimiter")
        upper = not config.get("case_sensitive")
        context = any(t in _DB_TOKENS or t.startswith("postgres") for t in _camel_tokens(name))
        for item in _fields(cls.node):
            assert isinstance(item.target, ast.Name)
            field_name = item.target.id
            where = f"{cls.shown}:{item.lineno} ({path}.{field_name})"
            types = _annotation_names(item.annotation)
            # a model with fields of its own (an Enum has none: it is a value, not a model)
            inner = next((t for t in types if t in self.classes and t != name
                          and any(_fields(self.classes[t].node))), None)
            if inner is not None and isinstance(delimiter, str) and delimiter and depth < 4:
                inner_prefix = f"{prefix}{field_name}{delimiter}"
                yield from self._names(inner, config, inner_prefix, f"{path}.{field_name}", depth + 1)
                continue
            alias = _alias(item.value)
            env_name = alias or f"{prefix}{field_name}"
            env_name = env_name.upper() if upper else env_name
            role = "url" if _URL_TYPES & set(types) else None
            if role is None and context:
                role = role_of(env_name, context=True)
            yield _Read(env_name, where, role=role)


def _camel_tokens(name: str) -> list[str]:
    return [t.lower() for t in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


# -- .env files ----------------------------------------------------------------------------


def env_file_assignments(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, name, value) of each `NAME=value` line of a .env-style file; an
    unreadable file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    for number, line in enumerate(text.splitlines(), start=1):
        match = _ENV_LINE.match(line)
        if match:
            yield number, match[1], match[2].strip().strip("'\"")


def dotenv_reads(path: Path, shown: str) -> Iterator[_Read]:
    for number, name, value in env_file_assignments(path):
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        driver = _SCHEME_DRIVER.get(scheme)
        role = "url" if driver else None
        yield _Read(name, f"{shown}:{number}", role=role, scheme_driver=driver)


# -- the driver ----------------------------------------------------------------------------------


def _dependency_texts(path: Path) -> Iterator[str]:
    """Requirement strings of a pyproject.toml or a requirements file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if path.name != "pyproject.toml":
        yield from (line.split("#")[0] for line in text.splitlines())
        return
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    project = data.get("project", {})
    yield from project.get("dependencies", [])
    for group in (project.get("optional-dependencies", {}), data.get("dependency-groups", {})):
        for items in group.values() if isinstance(group, dict) else ():
            yield from (i for i in items if isinstance(i, str))
    poetry = data.get("tool", {}).get("poetry", {})
    tables = [poetry.get("dependencies", {})]
    tables += [g.get("dependencies", {}) for g in poetry.get("group", {}).values() if isinstance(g, dict)]
    for table in tables:
        for name, spec in table.items() if isinstance(table, dict) else ():
            extras = spec.get("extras", []) if isinstance(spec, dict) else []
            yield f"{name}[{','.join(extras)}]"


def _driver(
    dependency_files: Sequence[Path], env_pys: Sequence[Path], reads: Sequence[_Read], project_dir: Path
) -> tuple[str | None, str, list[str]]:
    """(url_driver, where it came from, notes)."""
    found: dict[str, str] = {}  # driver -> the file naming it first
    for path in dependency_files:
        for requirement in _dependency_texts(path):
            lowered = str(requirement).lower().replace("_", "-")
            for driver, pattern in _DRIVER_DEPENDENCY:
                if pattern.search(lowered):
                    found.setdefault(driver, _shown(path, project_dir))
    async_env = next((p for p in env_pys if _ASYNC_ENV.search(_read_text(p))), None)
    schemes: dict[str, _Read] = {}  # driver -> the first name whose .env value uses it
    for read in reads:
        if read.scheme_driver and read.scheme_driver != "libpq":
            schemes.setdefault(read.scheme_driver, read)
    notes: list[str] = []
    if len(found) > 1:
        notes.append(f"the dependencies name {', '.join(sorted(found))}")
    if async_env is not None and ("asyncpg" in found or not found):
        why = f"{_shown(async_env, project_dir)} is async"
        return "asyncpg", why + (f"; asyncpg in {found['asyncpg']}" if "asyncpg" in found else ""), notes
    for driver, read in schemes.items():
        if driver in found or not found:
            return driver, f"the URL scheme of {read.name} in {read.where.split(' ')[0]}", notes
    for driver in ("psycopg", "psycopg2", "asyncpg"):
        if driver in found:
            return driver, f"{driver} in the dependencies ({found[driver]})", notes
    notes.append("url_driver: no PostgreSQL driver in the dependencies; the default (asyncpg) stays")
    return None, "", notes


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- the proposal ---------------------------------------------------------------------------------


def propose_env(project_dir: Path, env_pys: Sequence[Path], skip: Callable[[Path, str], bool]) -> EnvProposal:
    """The mapping of the names the project reads onto the branch, and its url_driver."""
    reads: list[_Read] = []
    classes: dict[str, _Class] = {}
    dependency_files: list[Path] = []
    python_files = 0
    for path in walk_files(project_dir, skip):
        shown = _shown(path, project_dir)
        if path.suffix == ".py" and python_files < MAX_PYTHON_FILES:
            python_files += 1
            tree = _parse(path)
            if tree is None:
                continue
            reads.extend(environ_reads(tree, shown))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, _Class(node, shown))
        elif ENV_FILE.match(path.name):
            reads.extend(dotenv_reads(path, shown))
        elif path.name == "pyproject.toml" or re.match(r"^requirements.*\.(txt|in)$", path.name):
            dependency_files.append(path)
    reads.extend(_Settings(classes).reads())
    driver, driver_from, notes = _driver(dependency_files, env_pys, reads, project_dir)
    return EnvProposal(_lines(reads, driver), driver, driver_from, tuple(notes))


def _lines(reads: Sequence[_Read], driver: str | None) -> tuple[EnvLine, ...]:
    """One line per name, in the order first found; a name's .env scheme picks its URL form."""
    roles: dict[str, str] = {}
    found: dict[str, list[str]] = {}
    drivers: dict[str, str] = {}
    for read in reads:
        role = read.role or role_of(read.name)
        if role is None or not _ENV_NAME.match(read.name):  # not a name a mapping can set
            continue
        if role == "url" and any(t in _DIRECT_TOKENS for t in _tokens(read.name)):
            role = "direct_url"
        roles.setdefault(read.name, role)
        found.setdefault(read.name, []).append(read.where)
        if read.scheme_driver:
            drivers.setdefault(read.name, read.scheme_driver)
    return tuple(
        EnvLine(name, _template(role, drivers.get(name, driver)), tuple(dict.fromkeys(found[name])))
        for name, role in roles.items()
    )
