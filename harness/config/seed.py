"""`seed` in [tool.cathouse_harness]: reference data put into the template after the
migrations (`cathouse_harness.migrate.seed` applies it).

Each entry is a SQL file (relative to the project root) or a Python callable written
`module:function`. The SQL files run first, in the order given, then the callables, in
the order given: a callable may rely on what the files loaded. Files are checked here
(a missing one is a configuration error at load); callables are only parsed, since
importing project code while reading settings would be slow and could have effects.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathouse_harness.errors import ConfigError

KEY = "seed"
_CALLABLE = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<function>[A-Za-z_]\w*)")
EXAMPLE = 'e.g. seed = ["sql/reference.sql", "tests.seed:load"]'


@dataclass(frozen=True)
class SeedCall:
    """A callable `module:function`, called with a SQLAlchemy Connection to the branch."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"


@dataclass(frozen=True)
class Seed:
    """What a new template receives after its migrations: `sql` files, then `calls`."""

    sql: tuple[Path, ...] = ()
    calls: tuple[SeedCall, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sql or self.calls)


def parse_seed(raw: Any, root: Path, source: str) -> Seed:
    """The `seed` list as given in `source`; a SQL file that does not exist fails here."""
    if not isinstance(raw, list) or not all(isinstance(entry, str) for entry in raw):
        raise ConfigError("must be a list of strings", key=KEY, source=source, hint=EXAMPLE)
    sql: list[Path] = []
    calls: list[SeedCall] = []
    for entry in raw:
        text = entry.strip()
        named = _CALLABLE.fullmatch(text)
        if named:
            calls.append(SeedCall(named["module"], named["function"]))
            continue
        path = (root / text).resolve()
        if not text or not path.is_file():
            raise ConfigError(
                f"{entry!r} is neither a file under {root} nor a callable `module:function`",
                key=KEY, source=source, hint=EXAMPLE,
            )
        sql.append(path)
    return Seed(tuple(sql), tuple(calls))


def module_file(call: SeedCall, root: Path) -> Path | None:
    """The source file of `call`'s module as an import from the project root would find
    it (the root first, then sys.path), found without importing anything: the migration
    fingerprint reads it, and a template reused must cost no import of project code."""
    parts = call.module.split(".")
    for base in (str(root), *sys.path):
        directory = Path(base or ".").joinpath(*parts)
        for candidate in (directory.with_suffix(".py"), directory / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def missing_module(call: SeedCall, source: str) -> ConfigError:
    return ConfigError(
        f"cannot find module {call.module!r} of {call}",
        key=KEY, source=source,
        hint="name a module importable from the project root, e.g. tests.seed:load for tests/seed.py",
    )
