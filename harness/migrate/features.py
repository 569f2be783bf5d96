"""Which of Neon's server features a project's migrations use, read from their text.

`cathouse-branch doctor` compares them with what the running local server has. A grep,
not a parse: CREATE EXTENSION and ICU collations are written as SQL strings (op.execute,
text(), .sql files beside the revisions) whatever the revision's Python looks like, and
a name found in a comment only makes doctor over-cautious.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from cathouse_harness.config.settings import Settings

ICU = "icu"

_EXTENSION = re.compile(
    r"""create\s+extension\s+(?:if\s+not\s+exists\s+)?(?:"([^"]+)"|([A-Za-z_][\w-]*))""",
    re.IGNORECASE,
)
_ICU = re.compile(r"""provider\s*=\s*['"]?icu\b""", re.IGNORECASE)
_SUFFIXES = (".py", ".sql")


def _sources(settings: Settings) -> Iterator[Path]:
    from cathouse_harness.migrate.scan import AlembicSetup, read_setup

    for service in settings.migrating_services:
        assert service.alembic_ini is not None
        setup = read_setup(service.alembic_ini)
        if not isinstance(setup, AlembicSetup):
            continue
        for directory in setup.version_dirs:
            if directory.is_dir():
                yield from sorted(p for p in directory.rglob("*") if p.suffix in _SUFFIXES)
    yield from settings.migration_sources


def features_used(settings: Settings) -> dict[str, Path]:
    """Extension names (and "icu") the migrations create, each with the first file that
    does."""
    found: dict[str, Path] = {}
    for path in _sources(settings):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in _EXTENSION.finditer(text):
            found.setdefault(match.group(1) or match.group(2), path)
        if _ICU.search(text):
            found.setdefault(ICU, path)
    return found
