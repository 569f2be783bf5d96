"""Render the latest benchmark results into docs/performance.md.

    python benchmarks/report.py           # rewrite the blocks between the markers
    python benchmarks/report.py --check   # exit 1 when the page and the results differ

The figures in the docs come from results files, never typed by hand: run.py writes
`benchmarks/results/latest.json`, which this script turns into the same table run.py
prints; a single-part benchmark run with `--results` writes `benchmarks/results/<name>.json`
(`_common.write_results`: its printed rows, the command, the machine), rendered as a
table of its own in the second block. tests/unit/test_readme_hints.py fails when the page
no longer matches the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"
PAGE = HERE.parent / "docs" / "performance.md"
BEGIN = "<!-- benchmarks/report.py: begin (generated from benchmarks/results/latest.json) -->"
END = "<!-- benchmarks/report.py: end -->"
PARTS_BEGIN = "<!-- benchmarks/report.py: single parts begin (from benchmarks/results/<name>.json) -->"
PARTS_END = "<!-- benchmarks/report.py: single parts end -->"


def render(results: dict[str, Any]) -> str:
    sys.path.insert(0, str(HERE))
    try:
        from run import table
    finally:
        sys.path.remove(str(HERE))
    machine = results["machine"]
    kind = "`python benchmarks/run.py --quick`" if results["quick"] else "`python benchmarks/run.py`"
    return (
        f"{kind}, started {results['started_at']}, {machine['cpus']} CPUs, Python "
        f"{machine['python']}, {machine['platform']} ({results['seconds']:.0f} s):\n\n"
        f"{table(results)}\n"
    )


def render_part(results: dict[str, Any]) -> str:
    """A single-part benchmark's results file: its command, the run, its table."""
    machine = results["machine"]
    lines = [
        f"`{results['command']}`, started {results['started_at']}, {machine['cpus']} CPUs, Python "
        f"{machine['python']}, {machine['platform']} ({results['seconds']:.0f} s, load average "
        f"{results.get('load_average', '?')} at its end):",
        "",
    ]
    if results["rows"]:
        lines += [
            "| measure | value | note |",
            "|---|---|---|",
            *(f"| {measure} | {value} | {note} |" for measure, value, note in results["rows"]),
        ]
    if results.get("printed"):  # a table of the benchmark's own, as it printed it
        lines += ["```text", results["printed"].rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def parts() -> str:
    """Every single-part results file (those with rows), by name."""
    found = []
    for path in sorted(RESULTS.parent.glob("*.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        if "rows" in results:
            found.append(render_part(results))
    return "\n".join(found)


def with_block(page: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    head, sep, rest = page.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise SystemExit(f"{PAGE}: the markers {begin!r} and {end!r} are missing")
    return f"{head}{begin}\n{block}{end}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    wanted = with_block(page, render(json.loads(RESULTS.read_text(encoding="utf-8"))))
    wanted = with_block(wanted, parts(), PARTS_BEGIN, PARTS_END)
    if args.check:
        if wanted != page:
            print(f"{PAGE} is stale: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
