"""A service's upgrade target and where its database stands against it, heads and all.

A project whose core and plugins ship revision histories into one version table has
several heads: `alembic upgrade head` stops there ("Multiple head revisions are
present") and the project upgrades with `alembic upgrade heads`, or to branch labels
(`core@head`). A service's `target` says which; without one, a history with a single
head gets `head`, and one with several gets `heads` when the project's own scripts or
docs run `upgrade heads`, else one line saying how to set `target`.

Where a database stands is Alembic's revision graph read both ways: the revisions its
heads reach (ancestors and `depends_on`, through ScriptDirectory's revision map) against
the ones the target reaches. Target revisions not reached: behind. Revisions reached
that the target does not reach, or that no revision file has: ahead. Both: diverged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cathouse_harness.config.settings import ServiceConfig, Settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.migrate.run_memo import remembered

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

HEAD_TARGETS = (("head",), ("heads",))

# `alembic upgrade heads` in a script, Makefile or doc; `command.upgrade(cfg, "heads")` in code
_USES_HEADS = re.compile(
    r"""\bupgrade\s+heads\b|\bupgrade\(\s*[\w.]+\s*,\s*(?:revision\s*=\s*)?["']heads["']"""
)
# Where a project says how it migrates: the root and service directories, and these below them.
_SCRIPT_DIRS = ("scripts", "bin", "docs", "doc", "docker", "deploy", ".github/workflows", ".gitlab")
_SCRIPT_SUFFIXES = {
    ".sh", ".bash", ".md", ".rst", ".txt", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".py",
    ".mk", ".ps1", ".bat", ".env",
}
_SCRIPT_NAMES = {"Makefile", "makefile", "GNUmakefile", "justfile", "Justfile", "Procfile",
                 "Taskfile", "Dockerfile", "tox.ini", "noxfile.py"}
_MAX_SCRIPT_BYTES = 512 * 1024

State = Literal["at", "behind", "ahead", "diverged"]


@dataclass(frozen=True)
class Standing:
    """The database's heads against the revisions its target names."""

    state: State
    database: tuple[str, ...]  # the version table's revisions
    target: tuple[str, ...]  # the revisions the target resolves to
    missing: tuple[str, ...]  # target revisions the database has not reached
    beyond: tuple[str, ...]  # database revisions the target does not reach
    unknown: tuple[str, ...]  # database revisions no revision file has

    def describe(self) -> str:
        """`behind: at a1; not yet b2 (target b2, c3)`, for doctor."""
        at = ",".join(self.database) or "base"
        if self.state == "at":
            return f"at {at}"
        return f"{self.state}: at {at}; {self._details()} (target {', '.join(self.target) or 'base'})"

    def note(self) -> str:
        """`ahead of its target c3: past it with b2`, beside a migration's own line."""
        relation = {"behind": "behind", "ahead": "ahead of", "diverged": "diverged from"}
        target = ", ".join(self.target) or "base"
        return f"{relation.get(self.state, 'at')} its target {target}: {self._details()}"

    def _details(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"not yet {', '.join(self.missing)}")
        known_beyond = [r for r in self.beyond if r not in self.unknown]
        if known_beyond:
            parts.append(f"past the target with {', '.join(known_beyond)}")
        if self.unknown:
            parts.append(f"{', '.join(self.unknown)} in no revision file")
        return "; ".join(parts)


def several_heads_error(service: ServiceConfig, heads: Sequence[str], source: str) -> ConfigError:
    """The one line for a history with several heads and a target of `head`."""
    shown = ", ".join(sorted(heads))
    return ConfigError(
        f"its revisions have {len(heads)} heads ({shown}), so upgrading to head stops "
        '("Multiple head revisions are present")',
        key=f"services[{service.name}].target",
        source=source,
        hint='set target = "heads" in its [[tool.cathouse_harness.services]] entry, or a list '
        'of branch labels such as ["core@head", "plugin@head"]',
    )


def service_target(settings: Settings, service: ServiceConfig,
                   script: ScriptDirectory) -> tuple[str, ...]:
    """What `alembic upgrade` is given for `service`: its configured target, else `head`
    for a single head, else `heads` when the project upgrades that way itself."""
    if service.target is not None:
        return service.target
    heads = script.get_heads()
    if len(heads) <= 1:
        return ("head",)
    if uses_heads(settings.project_root, service) is not None:
        return ("heads",)
    raise several_heads_error(service, heads, settings.source_of("services"))


def uses_heads(root: Path, service: ServiceConfig) -> Path | None:
    """The first file of the project that runs `upgrade heads` (read once per run)."""
    places = [root]
    if service.directory is not None:
        places.append(service.directory)
    if service.alembic_ini is not None:
        places.append(service.alembic_ini.parent)
    return remembered(("uses_heads", root, service), lambda: _first_use(places))


def _first_use(places: Iterable[Path]) -> Path | None:
    seen: set[Path] = set()
    for place in places:
        for path in _script_files(place):
            if path in seen:
                continue
            seen.add(path)
            try:
                if path.stat().st_size > _MAX_SCRIPT_BYTES:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if _USES_HEADS.search(text):
                return path
    return None


def _script_files(place: Path) -> Iterable[Path]:
    def wanted(path: Path) -> bool:
        return path.is_file() and (path.name in _SCRIPT_NAMES or path.suffix in _SCRIPT_SUFFIXES
                                   or path.name.startswith("Dockerfile"))

    if not place.is_dir():
        return
    yield from sorted(p for p in place.iterdir() if wanted(p))
    for name in _SCRIPT_DIRS:
        directory = place / name
        if directory.is_dir():
            yield from sorted(p for p in directory.rglob("*") if wanted(p))


def target_revisions(script: ScriptDirectory, target: Sequence[str]) -> tuple[str, ...]:
    """The revision ids `target` names (`heads`, `core@head`, a revision id, `base`)."""
    found: set[str] = set()
    for item in target:
        if item == "base":
            continue
        if item == "heads":
            found.update(script.get_heads())
            continue
        found.update(r.revision for r in script.get_revisions(item) if r is not None)
    return tuple(sorted(found))


def _reached(script: ScriptDirectory, revisions: Iterable[str]) -> set[str]:
    """`revisions` and everything they stand on: down revisions and depends_on."""
    nodes = [script.revision_map.get_revision(r) for r in revisions]
    # The revision map's own walk, the one `upgrade` follows (dependencies included).
    return {n.revision for n in script.revision_map._get_ancestor_nodes(  # noqa: SLF001
        [n for n in nodes if n is not None], check=False, include_dependencies=True)}


def standing(script: ScriptDirectory, database: Sequence[str], target: Sequence[str]) -> Standing:
    """Where the database (its version table's revisions) stands against `target`."""
    known = {r.revision for r in script.walk_revisions()}
    unknown = tuple(sorted(r for r in database if r not in known))
    wanted_tips = target_revisions(script, target)
    wanted = _reached(script, wanted_tips)
    reached = _reached(script, [r for r in database if r in known])
    # A revision no file has may well stand on any target revision (the usual case: the
    # branch was migrated by newer code), so with one of them nothing counts as missing.
    missing = () if unknown else tuple(t for t in wanted_tips if t not in reached)
    beyond = tuple(sorted(r for r in database if r not in wanted))
    state: State
    if missing and beyond:
        state = "diverged"
    elif missing:
        state = "behind"
    elif beyond:
        state = "ahead"
    else:
        state = "at"
    return Standing(state, tuple(sorted(database)), wanted_tips, missing, beyond, unknown)
