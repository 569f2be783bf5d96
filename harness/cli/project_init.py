"""`cathouse-branch init`: propose `[tool.cathouse_harness]` for a project that has
Alembic setups but no harness configuration yet.

Each Alembic configuration under the project (an alembic.ini, or a pyproject.toml with
`[tool.alembic]` and no alembic.ini beside it) becomes a service: named after its
directory, in the schema its env.py keeps the version table in (else the one its revision
files create tables in, else public), ordered so that a service whose revisions hold a
foreign key into another service's schema migrates after it. A configuration whose
revisions another one already reaches (through `version_locations`) is part of that one's
service; histories that share a version table are one service, migrated to "heads". Every
value carries a note saying where it came from, because a guess the user cannot check is
worse than none.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cathouse_harness.cli.project_env import EnvProposal, propose_env
from cathouse_harness.cli.project_names import NamesProposal, propose_names
from cathouse_harness.cli.pyproject_edit import Outcome, lookup, put_table
from cathouse_harness.config.services import plain_identifier
from cathouse_harness.config.settings import TOOL_TABLE, load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.migrate.scan import (
    AlembicSetup,
    EnvFacts,
    History,
    Links,
    Skipped,
    env_facts,
    read_history,
    read_setup,
    revision_facts,
    revision_links,
)

DEFAULT_CONNECTION_LIMIT = 10
DEFAULT_SCHEMA = "public"
# what a pool gets, best first: the seed's 2+1, then smaller while the budget is short
POOL_TIERS = ((2, 1), (1, 1), (1, 0))
SKIP_DIRS = frozenset({"venv", "env", "node_modules", "site-packages", "build", "dist", "__pycache__"})
# directories that name what they hold, not whose it is: the service is the one above
GENERIC_DIRS = frozenset({"alembic", "migrations", "migration", "db", "database"})


@dataclass(frozen=True)
class ServiceProposal:
    name: str
    schema: str
    alembic_ini: str  # relative to the project directory, with forward slashes
    pool_size: int
    max_overflow: int
    after: tuple[str, ...]  # services it references, which therefore migrate first
    notes: tuple[str, ...]  # where each value came from
    target: str = "head"  # "heads" where several histories share the version table
    # where its Alembic runs from, relative to the project ("." for the root); None: the
    # ini's own directory, the default
    directory: str | None = None


@dataclass(frozen=True)
class Proposal:
    project_dir: Path
    connection_limit: int
    services: tuple[ServiceProposal, ...]
    notes: tuple[str, ...]  # about the project as a whole: skipped files, order, pools
    env: EnvProposal = EnvProposal()
    # None only for proposals built by hand; init always says which database and role
    names: NamesProposal | None = None

    def toml(self) -> str:
        lines = [
            f"[{TOOL_TABLE}]",
            "# proposed by `cathouse-branch init`: services migrate in the order listed",
            f"connection_limit = {self.connection_limit}",
            *self._names_lines(),
            *self.env.driver_lines(),
        ]
        for service in self.services:
            lines += [
                "",
                f"[[{TOOL_TABLE}.services]]",
                f"name = {_toml_string(service.name)}",
                f"schema = {_toml_string(service.schema)}",
                f"alembic_ini = {_toml_string(service.alembic_ini)}",
            ]
            if service.directory is not None:
                lines.append(f"directory = {_toml_string(service.directory)}")
            lines += [
                f"pool_size = {service.pool_size}",
                f"max_overflow = {service.max_overflow}",
                *_target_lines(service),
            ]
        lines += self.env.table_lines(f"{TOOL_TABLE}.env")
        return "\n".join(lines) + "\n"

    def _names_lines(self) -> list[str]:
        if self.names is None:
            return []
        return [f"database = {_toml_string(self.names.database)}", f"role = {_toml_string(self.names.role)}"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "project_dir": str(self.project_dir),
            "connection_limit": self.connection_limit,
            **({"database": self.names.database, "role": self.names.role} if self.names else {}),
            "services": [
                {
                    "name": s.name, "schema": s.schema, "alembic_ini": s.alembic_ini,
                    "directory": s.directory,
                    "pool_size": s.pool_size, "max_overflow": s.max_overflow,
                    "target": s.target, "after": list(s.after), "notes": list(s.notes),
                }
                for s in self.services
            ],
            "notes": list(self.notes),
            **self.env.as_dict(),
        }


def _target_lines(service: ServiceProposal) -> list[str]:
    return [] if service.target == "head" else [f"target = {_toml_string(service.target)}"]


def _toml_string(value: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX) are all valid in a TOML basic string
    return json.dumps(value)


# -- discovery ------------------------------------------------------------------------------


def _skipped_dir(directory: Path, name: str) -> bool:
    return (
        name.startswith(".")
        or name in SKIP_DIRS
        or name.endswith(".egg-info")
        or (directory / name / "pyvenv.cfg").exists()  # a virtualenv by any name
    )


def find_alembic_configs(project_dir: Path) -> list[Path]:
    """Every Alembic configuration under `project_dir`, sorted by directory (the root
    first): each alembic.ini, and each pyproject.toml whose [tool.alembic] names a
    script_location with no alembic.ini beside it (Alembic runs from that file alone)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(project_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not _skipped_dir(here, d))
        if "alembic.ini" in files:
            found.append(here / "alembic.ini")
        elif "pyproject.toml" in files and _tool_alembic_location(here / "pyproject.toml"):
            found.append(here / "pyproject.toml")
    found.sort(key=lambda p: p.parent.relative_to(project_dir).parts)
    return found


def _tool_alembic_location(pyproject: Path) -> bool:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(lookup(data, "tool.alembic.script_location"), str)


def _relative(path: Path, project_dir: Path) -> str:
    return path.relative_to(project_dir).as_posix()


def _shown(path: Path, project_dir: Path) -> str:
    return _relative(path, project_dir) if path.is_relative_to(project_dir) else str(path)


def _project_name(project_dir: Path) -> tuple[str, str]:
    try:
        data = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
        name = lookup(data, "project.name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        name = None
    if isinstance(name, str) and name.strip():
        return name.strip(), "[project].name in pyproject.toml"
    return project_dir.name, "the project directory's name"


def _service_name(ini: Path, project_dir: Path) -> tuple[str, str]:
    directory = ini.parent
    while directory.name in GENERIC_DIRS and directory != project_dir:
        directory = directory.parent
    if directory == project_dir:
        return _project_name(project_dir)
    return directory.name, f"the directory name {_relative(directory, project_dir)}/"


# -- one service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    name: str
    schema: str
    alembic_ini: str
    references: Mapping[str, str]  # schema -> "auth.users.id in versions/0002_x.py", first seen
    notes: tuple[str, ...]
    # (schema or None for the search path, table) where env.py keeps the version table;
    # None when init cannot tell
    version_table: tuple[str | None, str] | None = None
    target: str = "head"
    directory: str | None = None
    links: Links = Links(frozenset(), ())
    version_dirs: tuple[str, ...] = ()
    needs_app: str | None = None  # see EnvFacts.needs_app


def _schema_of(
    setup: AlembicSetup, env: EnvFacts | None, history: History, project_dir: Path
) -> tuple[str, list[str], dict[str, str]]:
    """The service's schema, the notes that explain it, and the schemas its FKs point at."""
    notes: list[str] = []
    env_py = setup.env_py
    revisions = revision_facts(history.files)
    references: dict[str, str] = {}
    for ref in revisions.references:
        references.setdefault(ref.schema, f"{ref.target} in {_relative(ref.file, project_dir)}")
    for path in revisions.unreadable:
        notes.append(f"could not parse {_relative(path, project_dir)}; its schemas are not counted")

    created = set(revisions.table_schemas)
    from_tables = next(iter(created)) if len(created) == 1 else None
    if env is not None and env.error:
        notes.append(f"{env.error}: no version_table_schema read")
    values = {f.value for f in env.version_table_schemas} if env else set()
    if env is not None and env_py is not None and len(values) == 1:
        found = env.version_table_schemas[0]
        where = f"{found.how} in {_relative(env_py, project_dir)}"
        if not from_tables or from_tables == found.value:
            notes.append(f"schema {found.value!r}: {where}")
            return found.value, notes, references
        # a version table kept apart (a shared `meta` schema, say): the service owns the
        # schema its tables are in
        count = len(revisions.table_schemas)
        notes.append(f"schema {from_tables!r}: schema= of its {count} op.create_table call(s); "
                     f"its version table is kept apart ({where})")
        return from_tables, notes, references
    if len(values) > 1:
        notes.append(f"env.py sets version_table_schema to {' and '.join(sorted(values))}; not used")
    for expression in env.unresolved if env else ():
        notes.append(f"env.py sets version_table_schema={expression}, which init cannot evaluate")
    if from_tables:
        count = len(revisions.table_schemas)
        notes.append(f"schema {from_tables!r}: schema= of its {count} op.create_table call(s)")
        return from_tables, notes, references
    if len(created) > 1:
        shown = ", ".join(sorted(s or "none" for s in created))
        notes.append(f"its op.create_table calls disagree on schema= ({shown})")
    elif not revisions.files:
        notes.append("no revision files yet")
    notes.append(f"schema {DEFAULT_SCHEMA!r}: nothing else to go by; check it")
    return DEFAULT_SCHEMA, notes, references


def _candidate(setup: AlembicSetup, project_dir: Path) -> _Candidate:
    name, name_from = _service_name(setup.ini, project_dir)
    alembic_ini = _relative(setup.ini, project_dir)
    location = _shown(setup.script_dir, project_dir) if setup.script_dir else setup.script_location
    notes = [f"name {name!r}: {name_from}", f"script_location {location} (from {setup.config_from})"]
    if setup.script_dir is None:
        notes.append("script_location is a package resource init cannot find: env.py and revisions not read")
    elif not setup.script_dir.is_dir():
        notes.append(f"script_location {setup.script_dir} does not exist")
    directory = None
    if setup.directory is not None and setup.directory != setup.ini.parent:
        directory = _relative(setup.directory, project_dir)  # "." for the root itself
        notes.append(f"directory {directory!r}: script_location {setup.script_location} "
                     f"resolves from there, not from {_relative(setup.ini.parent, project_dir)}/")
    env = env_facts(setup.env_py) if setup.env_py else None
    history = read_history(setup)
    target, history_notes = _history_notes(setup, history, project_dir)
    schema, schema_notes, references = _schema_of(setup, env, history, project_dir)
    return _Candidate(
        name, schema, alembic_ini, references, tuple(notes + history_notes + schema_notes),
        version_table=env.version_table() if env else None, target=target,
        directory=directory, links=revision_links(history.files),
        version_dirs=tuple(_shown(d, project_dir) for d in setup.version_dirs),
        needs_app=env.needs_app if env else None,
    )


def _history_notes(setup: AlembicSetup, history: History, project_dir: Path) -> tuple[str, list[str]]:
    """The target to migrate to, and notes on what Alembic's ScriptDirectory found."""
    notes = [f"version_locations entry {entry!r} names no directory init can find (not imported)"
             for entry in setup.missing_versions]
    if len(setup.version_dirs) > 1:
        shown = ", ".join(_shown(d, project_dir) for d in setup.version_dirs)
        notes.append(f"version_locations: {shown}")
    for path in history.unreadable:
        notes.append(f"{_shown(path, project_dir)}: no literal revision = ... read; not counted")
    if history.error:
        notes.append(f"Alembic cannot order its revisions: {history.error}")
        return "head", notes
    if not history.files:
        return "head", notes
    count = len(history.bases)
    labels = f", branch labels {', '.join(history.branch_labels)}" if history.branch_labels else ""
    notes.append(f"{len(history.files)} revision(s), {count} histor{'y' if count == 1 else 'ies'}{labels}")
    if len(history.heads) > 1:
        notes.append(f'target "heads": its revisions end in {len(history.heads)} heads '
                     f"({', '.join(sorted(history.heads))}), all kept in one version table")
        return "heads", notes
    return "head", notes


# -- the project -----------------------------------------------------------------------------


def _unique_names(candidates: list[_Candidate]) -> list[_Candidate]:
    """Two directories with the same name: use their relative paths instead."""
    counts: dict[str, int] = {}
    for c in candidates:
        counts[c.name] = counts.get(c.name, 0) + 1
    fixed = []
    for c in candidates:
        if counts[c.name] > 1:
            path = str(Path(c.alembic_ini).parent).replace("/", "-")
            name = path if path != "." else c.name
            why = f"name {name!r}: another service is also called {c.name!r}"
            c = replace(c, name=name, notes=(*c.notes, why))
        fixed.append(c)
    return fixed


def _dependencies(candidates: list[_Candidate]) -> tuple[dict[str, list[str]], list[str]]:
    owner = {c.schema: c.name for c in candidates}
    depends: dict[str, list[str]] = {}
    notes: list[str] = []
    for c in candidates:
        depends[c.name] = []
        for schema, where in c.references.items():
            if schema == c.schema:
                continue
            if schema in owner:
                depends[c.name].append(owner[schema])
            else:
                notes.append(f"{c.name}: foreign key into schema {schema!r} ({where}), which no service owns")
    return depends, notes


def migration_order(names: Sequence[str], depends: dict[str, list[str]]) -> tuple[list[str], str | None]:
    """Services after the ones they depend on; ties keep `names`' order. On a cycle:
    `names` unchanged and the cycle as `a -> b -> a`."""
    placed: list[str] = []
    remaining = list(names)
    while remaining:
        ready = next((n for n in remaining if all(d in placed for d in depends.get(n, ()))), None)
        if ready is None:
            return list(names), _cycle(remaining, depends)
        placed.append(ready)
        remaining.remove(ready)
    return placed, None


def _cycle(remaining: list[str], depends: dict[str, list[str]]) -> str:
    path = [remaining[0]]
    while True:  # every remaining service waits on another remaining one: follow until a repeat
        nxt = next(d for d in depends[path[-1]] if d in remaining)
        if nxt in path:
            loop = path[path.index(nxt):] + [nxt]
            return " -> ".join(loop)
        path.append(nxt)


def _pools(count: int, limit: int) -> tuple[int, int, int, str]:
    """(pool_size, max_overflow, connection_limit, note) giving every service the same pool."""
    for size, overflow in POOL_TIERS:
        if count * (size + overflow) <= limit:
            total = count * (size + overflow)
            return size, overflow, limit, f"pools {size}+{overflow} each: {total} of connection_limit {limit}"
    note = (
        f"pools 1+0 each need {count} connections, more than {limit}: connection_limit raised "
        f"to {count}; check your Neon compute's limit"
    )
    return 1, 0, count, note


def propose(project_dir: Path) -> Proposal:
    project_dir = project_dir.resolve()
    if not project_dir.is_dir():
        raise ConfigError(f"{project_dir} is not a directory", key="--project-dir")
    notes: list[str] = []
    setups = []
    configs = find_alembic_configs(project_dir)
    for config_file in configs:
        setup = read_setup(config_file, project_dir)
        if isinstance(setup, Skipped):
            notes.append(f"skipped {_relative(config_file, project_dir)}: it {setup.reason}")
            continue
        setups.append(setup)
    setups = _joined_histories(setups, project_dir, notes)
    candidates, app_bound = _runnable([_candidate(s, project_dir) for s in setups], notes)
    candidates = _one_per_version_table(candidates, notes)
    candidates = _needing_another(candidates, notes)
    candidates = _one_per_schema(candidates, notes)
    if not candidates and not app_bound:
        found = f" ({notes[0]})" if notes else ""
        raise ConfigError(
            f"no Alembic configuration (an alembic.ini or [tool.alembic] with a script_location) "
            f"under {project_dir}{found}",
            key="--project-dir",
            hint="point --project-dir at the project, or run `alembic init` in each service first",
        )
    candidates = _unique_names(candidates)
    depends, dependency_notes = _dependencies(candidates)
    notes += dependency_notes
    order, cycle = migration_order([c.name for c in candidates], depends)
    if cycle:
        notes.append(f"foreign keys form a cycle ({cycle}): kept the directory order; check the revisions")
    limit = _existing_limit(project_dir)
    size, overflow, limit, pool_note = _pools(len(candidates), limit)
    if candidates:
        notes.append(pool_note)
    by_name = {c.name: c for c in candidates}
    services = []
    for name in order:
        c = by_name[name]
        after = tuple(d for d in order if d in depends[name])
        why = [f"after {d} ({c.references[by_name[d].schema]})" for d in after]
        order_note = "order: " + ("; ".join(why) if why else "no foreign key into another service's schema")
        services.append(ServiceProposal(
            name=name, schema=c.schema, alembic_ini=c.alembic_ini, pool_size=size,
            max_overflow=overflow, after=after, notes=(*c.notes, order_note), target=c.target,
            directory=c.directory,
        ))
    env = propose_env(project_dir, [s.env_py for s in setups if s.env_py is not None], _skipped_dir)
    names = propose_names(project_dir, configs, _skipped_dir)
    notes.append(names.note())
    return Proposal(project_dir, limit, tuple(services), tuple(notes), env, names)


def _runnable(candidates: list[_Candidate], notes: list[str]) -> tuple[list[_Candidate], bool]:
    """Candidates the harness can migrate, and whether any was left out because its
    env.py only runs inside the app (Flask-Migrate's): proposed as a service it would stop
    every run before the first test. Such an app migrates itself (flask_migrate.upgrade()
    or db.create_all() in create_app or a fixture), so the branch it gets can start empty;
    the env mapping still points the app at it."""
    kept = [c for c in candidates if c.needs_app is None]
    for c in candidates:
        if c.needs_app is not None:
            notes.append(
                f"{c.alembic_ini}: not a service: its env.py reads {c.needs_app}, so it runs only "
                f"inside the app (`flask db upgrade`), not under the harness's alembic; the "
                f"app's own upgrade()/create_all() migrates the branch it is mapped to"
            )
    return kept, len(kept) < len(candidates)


# -- histories that are one service ---------------------------------------------------------


def _reaches(setup: AlembicSetup, directory: Path) -> bool:
    return any(
        directory == d or (setup.recursive and directory.is_relative_to(d)) for d in setup.version_dirs
    )


def _reads_all(setup: AlembicSetup, other: AlembicSetup) -> bool:
    return all(_reaches(setup, d) for d in other.version_dirs)


def _joined_histories(setups: list[AlembicSetup], project_dir: Path, notes: list[str]) -> list[AlembicSetup]:
    """Setups without those whose every version directory another setup already reads
    (a plugin's own alembic.ini, joined into the core's through version_locations): Alembic
    run on the core migrates them, so they are the core's service, not one of their own."""
    kept = []
    for setup in setups:
        dirs = setup.version_dirs
        joined_into = next(
            (other for other in setups
             if other is not setup and dirs and all(_reaches(other, d) for d in dirs)
             # of two setups reading the same directories, the first listed stays
             and not (_reads_all(setup, other) and setups.index(other) > setups.index(setup))),
            None,
        )
        if joined_into is None:
            kept.append(setup)
            continue
        shown = ", ".join(_shown(d, project_dir) for d in dirs)
        notes.append(
            f"{_relative(setup.ini, project_dir)}: its revisions ({shown}) are read by "
            f"{_relative(joined_into.ini, project_dir)} through version_locations; one service"
        )
    return kept


def _shown_table(key: tuple[str | None, str]) -> str:
    schema, table = key
    return f"{schema}.{table}" if schema else f"{table} on the search path"


def _one_per_version_table(candidates: list[_Candidate], notes: list[str]) -> list[_Candidate]:
    """One service per version table: two Alembic setups writing the same one each stop at
    the other's revision ("Can't locate revision"), so only the first is proposed."""
    owner: dict[tuple[str | None, str], _Candidate] = {}
    kept = []
    for c in candidates:
        key = c.version_table
        first = owner.get(key) if key else None
        if key is None or first is None:
            if key:
                owner[key] = c
            kept.append(c)
            continue
        notes.append(
            f"{c.alembic_ini} left out: it keeps its revisions in the same version table as "
            f"{first.alembic_ini} ({_shown_table(key)}), so each would stop at the "
            f"other's revisions; add its versions directory to {first.alembic_ini}'s "
            'version_locations (that service then migrates to target "heads"), or give its '
            "env.py a version_table_schema of its own"
        )
    return kept


def _needing_another(candidates: list[_Candidate], notes: list[str]) -> list[_Candidate]:
    """Setups whose revisions depend on another setup's (a plugin's own alembic.ini, for
    making its revisions, whose first one depends on the core's): Alembic migrates them
    only together with that history, in its version table, from one configuration that
    lists both; as a service of their own they would stop at the revision they cannot
    find. Left out, with how to join them (the project may join them at run time, from
    its plugins' entry points, where init cannot see)."""
    kept: list[_Candidate] = []
    for c in candidates:
        found = next(((rev, name, other) for rev, name in c.links.outside
                      for other in candidates if other is not c and name in other.links.names), None)
        if found is None:
            kept.append(c)
            continue
        rev, name, other = found
        dirs = ", ".join(c.version_dirs) or "its versions directory"
        notes.append(
            f"{c.alembic_ini} left out: its revision {rev} depends on {name} of "
            f"{other.alembic_ini}'s history, so Alembic migrates both together in one version "
            f"table; add {dirs} to {other.alembic_ini}'s version_locations (or to an ini of "
            'your own that alembic_ini names) and set target = "heads"'
        )
    return kept


def _one_per_schema(candidates: list[_Candidate], notes: list[str]) -> list[_Candidate]:
    """The harness gives each service a plain-named schema of its own; a second claim is
    left out, as is a name it would have to quote."""
    owner: dict[str, _Candidate] = {}
    kept = []
    for c in candidates:
        if not plain_identifier(c.schema):
            notes.append(
                f"{c.alembic_ini} left out: its schema {c.schema!r} is not a plain SQL identifier "
                "(letters, digits, _), which the harness needs; rename it, then run init again"
            )
            continue
        if c.schema in owner:
            notes.append(
                f"{c.alembic_ini} left out: schema {c.schema!r} is already {owner[c.schema].alembic_ini}'s "
                "(each service owns its own schema); give one of them another schema"
            )
            continue
        owner[c.schema] = c
        kept.append(c)
    return kept


def _existing_limit(project_dir: Path) -> int:
    """A connection_limit the project already chose is the budget to fit."""
    try:
        data = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return DEFAULT_CONNECTION_LIMIT
    limit = lookup(data, f"{TOOL_TABLE}.connection_limit")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else (
        DEFAULT_CONNECTION_LIMIT
    )


def check_proposal(proposal: Proposal) -> None:
    """Raise the ConfigError the harness would raise on loading the proposed table: the
    settings loader itself reads it, as if it were the project's pyproject.toml table."""
    table = lookup(tomllib.loads(proposal.toml()), TOOL_TABLE)
    load_settings(
        proposal.project_dir, environ={}, use_dotenv=False, table=(table, "the proposed table")
    )


def write_proposal(proposal: Proposal, *, force: bool) -> tuple[Path, Outcome]:
    check_proposal(proposal)
    path = proposal.project_dir / "pyproject.toml"
    return path, put_table(path, TOOL_TABLE, proposal.toml(), force=force)
