"""The Cat House example's own suite, run the two ways a user types it (issue 13 item 6).

The `pytest` console script puts its own bin directory on sys.path, not the working
directory as `python -m pytest` does, so the example must not depend on the latter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin._support import EXAMPLE

PYTEST_SCRIPT = Path(sys.executable).parent / "pytest"


@pytest.mark.parametrize(
    "command",
    [[str(PYTEST_SCRIPT)], [sys.executable, "-m", "pytest"]],
    ids=["pytest-console-script", "python-m-pytest"],
)
def test_example_suite_passes(command: list[str], harness_home: Path) -> None:
    if not PYTEST_SCRIPT.exists():
        pytest.skip(f"no pytest console script beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["CATHOUSE_HARNESS_HOME"] = str(harness_home)
    # the example is the repository's own directory: leave no bytecode or cache behind in it
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [*command, "-p", "cathouse_harness", "-p", "no:cacheprovider", "-q"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    summary = re.search(r"(\d+) passed", output)
    assert summary and int(summary.group(1)) > 0, output[-3000:]
    assert "error" not in output.splitlines()[-1].lower(), output[-3000:]
