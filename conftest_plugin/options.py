"""Command-line options and how they become `Settings`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.support import env

GROUP = "cathouse-harness"
ENV_ISOLATED = ("DATABASE_URL", "MIGRATION_DATABASE_URL")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "Neon branch per test session (cathouse-harness)")
    group.addoption(
        "--cathouse-backend",
        choices=("neon", "embedded"),
        default=None,
        help="force Neon (needs NEON_API_KEY) or the embedded default; default: neon when "
        "NEON_API_KEY is set",
    )
    group.addoption("--cathouse-parent", default=None, help="parent branch (name or br- id)")
    group.addoption("--cathouse-ttl", default=None, help="branch TTL, e.g. 15m (max 30d)")
    group.addoption("--cathouse-project", default=None, help="Neon project id")
    group.addoption(
        "--cathouse-keep-branch",
        choices=("never", "on-failure", "always"),
        default=None,
        help="keep the session branch after the run for inspection; default: on-failure for "
        "the embedded default outside CI, never otherwise",
    )
    group.addoption(
        "--cathouse-diff-kept",
        action="store_true",
        default=False,
        help="print the schema diff of a branch kept for inspection against its parent "
        "(the template: what the tests changed) in the run's summary",
    )
    group.addoption(
        "--cathouse-show-secrets",
        action="store_true",
        default=False,
        help="show passwords: in kept branches' URLs, and in test reports (failure text, "
        "-l locals, captured output, JUnit XML), which are scrubbed otherwise",
    )
    group.addoption(
        "--cathouse-no-template-reuse",
        action="store_true",
        default=False,
        help="migrate each session branch instead of forking a reusable migrated template",
    )


def cli_options(options: argparse.Namespace) -> dict[str, Any]:
    """Our options as settings: from `config.option`, or before pytest has parsed the
    command line into it (the conftests are not imported yet) from its first reading."""
    given = {
        "backend": getattr(options, "cathouse_backend", None),
        "parent_branch": getattr(options, "cathouse_parent", None),
        "branch_ttl": getattr(options, "cathouse_ttl", None),
        "project_id": getattr(options, "cathouse_project", None),
        "keep_branch": getattr(options, "cathouse_keep_branch", None),
    }
    if getattr(options, "cathouse_diff_kept", False):
        given["diff_kept"] = True
    if getattr(options, "cathouse_no_template_reuse", False):
        given["template_reuse"] = False
    return {k: v for k, v in given.items() if v is not None}


def project_configures_harness(root: Path) -> bool:
    if env.read("CATHOUSE_CONFIG") is not None:
        return True  # load_settings reads that file in place of the pyproject.toml
    pyproject = root / "pyproject.toml"
    try:
        return "[tool.cathouse_harness" in pyproject.read_text(encoding="utf-8")
    except OSError:
        return False


def read_settings(config: pytest.Config, options: argparse.Namespace | None = None) -> Settings:
    return load_settings(config.rootpath, options=cli_options(options or config.option))
