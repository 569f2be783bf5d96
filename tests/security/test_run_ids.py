"""Item 5: a run id and a branch id become file names, so each must be one plain name.

`CATHOUSE_RUN_ID=.. pytest -n 2` once swept `runs/..`, which is the whole home (API key,
state, discovery file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cathouse_harness.cleanup.runs import branch_file_name, check_run_id, marker_dir
from cathouse_harness.config.settings import load_settings
from cathouse_harness.errors import ConfigError, SafetyError

from tests.security._support import minimal_project, run_pytest

SESSION_TEST = "def test_branch(neon_branch):\n    assert neon_branch.id\n"


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../x", "", "x" * 65, "a b", "run\nid"])
def test_bad_run_ids_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="CATHOUSE_RUN_ID") as caught:
        check_run_id(bad, source="environment")
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


@pytest.mark.parametrize("good", ["ci-123", "job_7.2", "a" * 64, "0f3a9c"])
def test_plain_run_ids_pass(good: str) -> None:
    assert check_run_id(good) == good


def test_marker_paths_stay_under_runs(tmp_path: Path) -> None:
    settings = load_settings(minimal_project(tmp_path / "p", {}), environ={
        "CATHOUSE_HARNESS_HOME": str(tmp_path / "home")})
    for run_id, worker in (("..", "main"), ("ok", ".."), ("ok", "../../x")):
        with pytest.raises(ConfigError):
            marker_dir(settings, run_id, worker)


@pytest.mark.parametrize("bad", ["../local-api-key", "br-../../x", "BR-X", "br-a/b", "kept-br-x", ""])
def test_branch_ids_that_are_not_plain_names_are_refused(bad: str) -> None:
    with pytest.raises(SafetyError):
        branch_file_name(bad)
    assert branch_file_name("br-wispy-meadow-12345678") == "br-wispy-meadow-12345678"


def test_dot_dot_run_id_stops_the_run_and_the_home_survives(tmp_path: Path, own_home: Path) -> None:
    (own_home / "keep-me").write_text("the home's own files\n")
    project = minimal_project(tmp_path / "project", {"test_one.py": SESSION_TEST})

    done = run_pytest(project, own_home, "-n", "2", CATHOUSE_RUN_ID="..")

    output = done.stdout + done.stderr
    assert (own_home / "keep-me").exists(), output
    assert done.returncode == 4, output  # pytest's usage error: nothing ran
    lines = [line for line in output.splitlines() if "CATHOUSE_RUN_ID" in line]
    assert len(lines) == 1 and "not a usable run id" in lines[0], output
    assert "Traceback" not in output
