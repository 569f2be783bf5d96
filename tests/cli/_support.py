"""Driving cathouse-branch in process, as tests/cli's tests all do."""

from __future__ import annotations

import io
from pathlib import Path

from cathouse_harness.cli.commands import main


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("cathouse-branch:")]


def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*args, "--project-dir", str(cwd)], out=out, err=err)
    return code, out.getvalue(), err.getvalue()
