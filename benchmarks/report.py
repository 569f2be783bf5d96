"""Render the latest `benchmarks/run.py` results into docs/performance.md.

    python benchmarks/report.py           # rewrite the block between the markers
    python benchmarks/report.py --check   # exit 1 when the page and the results differ

The figures in the docs come from the results file, never typed by hand: run.py writes
`benchmarks/results/latest.json`, this script turns it into the same table run.py prints,
and tests/unit/test_docs.py fails when the page no longer matches the file.
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


def with_block(page: str, block: str) -> str:
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{PAGE}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    wanted = with_block(page, render(json.loads(RESULTS.read_text(encoding="utf-8"))))
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
