"""Every README or docs/ section the code names in a message exists, every link between
the pages lands on a file and heading that exist, the performance page shows what the
benchmarks' results file holds, and every public fixture of the plugin explains itself in
`pytest --fixtures` and has a row in the fixture tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# README or docs/<page>.md then, within a few characters, a quoted title: README 'X',
# docs/fixtures.md "X", (docs/cli.md, "X"), README's "X" / README "…" under "X"
NAMED = re.compile(r"""(README|docs/[a-z0-9-]+\.md)[^"'\n=]{0,40}?\\?["']([A-Z][^"'\\\n]{2,80})\\?["']""")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _headings(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [line.lstrip("#").strip() for line in text.splitlines() if re.match(r"^#{1,4} \S", line)]


def _anchor(heading: str) -> str:
    # GitHub's rule: lower case, punctuation but hyphens dropped, spaces become hyphens
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _named_sections() -> list[tuple[str, str, str]]:
    found = []
    for package in ("harness", "conftest_plugin"):
        for path in sorted((ROOT / package).rglob("*.py")):
            # a title split over two literals ("…Only the " "branch is…") is joined first
            text = re.sub(r"""["']\s*\n\s*["']""", "", path.read_text(encoding="utf-8"))
            found += [(str(path.relative_to(ROOT)), page, title) for page, title in NAMED.findall(text)]
    return found


def test_messages_name_sections_that_exist() -> None:
    named = _named_sections()
    # the scan still finds the hints it is meant to check, those into docs/ among them
    assert len(named) >= 4
    assert any(page.startswith("docs/") for _, page, _ in named)
    missing = []
    for where, page, title in named:
        path = ROOT / ("README.md" if page == "README" else page)
        if not path.is_file() or not any(h.startswith(title.rstrip()) for h in _headings(path)):
            missing.append(f"{where}: {page} {title!r}")
    assert missing == []


def test_links_between_pages_land() -> None:
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in map(_anchor, _headings(path)):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_performance_page_shows_the_latest_results() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_public_fixtures_have_docstrings_and_table_rows() -> None:
    from pytest_cathouse_harness import fixtures

    public = {
        name: value for name, value in vars(fixtures).items()
        if not name.startswith("_") and type(value).__name__ == "FixtureFunctionDefinition"
    }
    assert {"neon_branch", "branch_per_test", "db_session"} <= set(public)
    undocumented = [name for name, value in public.items() if not _doc(value)]
    assert undocumented == []
    readme = _fixture_table(ROOT / "README.md")
    for name in ("neon_branch", "database_url", "migration_database_url", "service_engine",
                 "db_session", "reset_branch", "branch_per_test"):
        assert any(row.startswith(f"| `{name}`") for row in readme), name
    assert _fixture_table(ROOT / "docs" / "fixtures.md") == readme  # one table, shown twice


def _fixture_table(page: Path) -> list[str]:
    section = page.read_text(encoding="utf-8").split("\n## Fixtures\n", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line.rstrip())
        elif rows:
            break
    return rows


def _doc(value: object) -> str | None:
    inner = getattr(value, "_get_wrapped_function", None)
    function = inner() if callable(inner) else getattr(value, "__wrapped__", value)
    return getattr(function, "__doc__", None)


def test_toml_the_pages_show_parses() -> None:
    import tomllib

    blocks = [(page.name, body) for page in _pages()
              for body in re.findall(r"^```toml\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)]
    assert len(blocks) >= 6
    broken = []
    for name, body in blocks:
        try:
            tomllib.loads(body)
        except tomllib.TOMLDecodeError as exc:  # a block a reader could not paste
            broken.append(f"{name}: {exc}")
    assert broken == []


def test_the_configuration_page_lists_every_variable_the_harness_reads() -> None:
    from cathouse_harness.support.env import VARIABLES

    table = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert sorted(name for name in VARIABLES if not any(f"`{name}`" in row for row in rows)) == []


def test_the_configuration_page_shows_every_key_of_the_table() -> None:
    import tomllib

    from cathouse_harness.config.services import _SERVICE_KEYS
    from cathouse_harness.config.settings import _TOML_KEYS

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    first_block = re.findall(r"^```toml\n(.*?)^```", page, re.M | re.S)[0]
    table = tomllib.loads(first_block)["tool"]["cathouse_harness"]
    assert sorted(set(_TOML_KEYS) - set(table) - {"env"}) == []  # env: its own section, below
    assert "[tool.cathouse_harness.env]" in page
    shown = set().union(*(service for service in table["services"]))
    assert sorted(set(_SERVICE_KEYS) - shown - {"env", "read_only", "target", "directory"}) == []
    assert all(f"{key} = " in page for key in ("read_only", "target", "directory"))
