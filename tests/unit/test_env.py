"""Every environment variable is read in one place (cathouse_harness.support.env), from one table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cathouse_harness.config.settings import ENV_NAMES
from cathouse_harness.support import env

REPO = Path(__file__).resolve().parents[2]
# a read of the process environment: os.environ.get / os.environ[...] / os.getenv
_READ = re.compile(r"os\.getenv\(|os\.environ\.get\(|os\.environ\[[^\]]+\](?!\s*=)")


def test_every_setting_variable_is_in_the_table() -> None:
    assert set(ENV_NAMES.values()) <= set(env.VARIABLES)


def test_no_module_reads_the_environment_but_harness_env() -> None:
    readers = []
    for path in sorted([*REPO.glob("harness/**/*.py"), *REPO.glob("conftest_plugin/*.py")]):
        if path.name == "env.py" and path.parent.name == "harness":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _READ.search(line) and "saved" not in line:  # saving a value to restore it
                readers.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert readers == []


def test_read_refuses_a_name_not_in_the_table() -> None:
    with pytest.raises(KeyError):
        env.read("CATHOUSE_NOT_A_VARIABLE")
    assert env.read("CI", {"CI": ""}) is None and env.read("CI", {"CI": "true"}) == "true"
