"""Helpers for the security tests: a second local user, a minimal project, plugin runs.

A second user is simulated as root: a directory or link is given to `nobody` (65534)
with os.chown, which is exactly what that user could have made in a shared directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests._pins import SUITE_PINS

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="simulating a second user needs root")

MINIMAL_PYPROJECT = """\
[project]
name = "security-probe"
version = "0"

[tool.cathouse_harness]
parent_branch = "main"
"""


def minimal_project(directory: Path, tests: Mapping[str, str]) -> Path:
    """A project that configures the harness with no services: a session only forks main."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(MINIMAL_PYPROJECT)
    for name, source in tests.items():
        (directory / name).write_text(source)
    return directory


def give_to_other_user(path: Path) -> None:
    os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


def plugin_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k in SUITE_PINS or not k.startswith(("PYTEST_", "NEON_", "CATHOUSE_"))
        and k not in ("DATABASE_URL", "MIGRATION_DATABASE_URL")
    }
    env.update({"CATHOUSE_HARNESS_HOME": str(home), "CI": "true"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_pytest(project: Path, home: Path, *args: str, timeout: float = 180,
               **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "cathouse_harness", "-p", "no:cacheprovider",
         "-q", *args],
        cwd=project, env=plugin_env(home, **env), capture_output=True, text=True, timeout=timeout,
    )
