"""Every README section the code names in a message exists, and every public fixture of
the plugin explains itself in `pytest --fixtures` and has a row in README's table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# README then, within a few characters, a quoted title: README 'X', README "X",
# (README, "X"), README's "X" / README "…" under "X"
NAMED = re.compile(r"""README[^"'\n=]{0,40}?\\?["']([A-Z][^"'\\\n]{2,80})\\?["']""")


def _headings() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.lstrip("#").strip() for line in text.splitlines() if re.match(r"^#{1,4} \S", line)]


def _named_sections() -> list[tuple[str, str]]:
    found = []
    for package in ("harness", "conftest_plugin"):
        for path in sorted((ROOT / package).rglob("*.py")):
            # a title split over two literals ("…Only the " "branch is…") is joined first
            text = re.sub(r"""["']\s*\n\s*["']""", "", path.read_text(encoding="utf-8"))
            found += [(str(path.relative_to(ROOT)), title) for title in NAMED.findall(text)]
    return found


def test_messages_name_readme_sections_that_exist() -> None:
    headings = _headings()
    named = _named_sections()
    assert len(named) >= 4  # the scan still finds the hints it is meant to check
    missing = [
        f"{where}: {title!r}" for where, title in named
        if not any(heading.startswith(title.rstrip()) for heading in headings)
    ]
    assert missing == []


def test_public_fixtures_have_docstrings_and_readme_rows() -> None:
    from pytest_cathouse_harness import fixtures

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    public = {
        name: value for name, value in vars(fixtures).items()
        if not name.startswith("_") and type(value).__name__ == "FixtureFunctionDefinition"
    }
    assert {"neon_branch", "branch_per_test", "db_session"} <= set(public)
    undocumented = [name for name, value in public.items() if not _doc(value)]
    assert undocumented == []
    for name in ("neon_branch", "database_url", "migration_database_url", "service_engine",
                 "db_session", "reset_branch", "branch_per_test"):
        assert f"| `{name}`" in readme, name


def _doc(value: object) -> str | None:
    inner = getattr(value, "_get_wrapped_function", None)
    function = inner() if callable(inner) else getattr(value, "__wrapped__", value)
    return getattr(function, "__doc__", None)

