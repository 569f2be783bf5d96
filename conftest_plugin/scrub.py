"""Keeping the harness's secrets out of test reports.

A failing test that prints `database_url`, asserts on it or raises with it (and `-l`,
which shows every local) puts the role password into the terminal, into JUnit XML and
into whatever CI keeps of both. Every report is scrubbed where it is made, in the
process that ran the test (so an xdist worker sends its controller a clean report):
each string in its long representation and in its captured sections goes through
`cathouse_harness.support.redact.scrub`, which removes every secret the harness registered and any
password inside a URL. `--cathouse-show-secrets` turns this off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cathouse_harness.support.redact import scrub


def _scrubbed(value: Any) -> Any:
    """`value` with every string in it scrubbed; pytest's repr objects are changed in place
    (they keep their structure, so the terminal shows them as before)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        value[:] = [_scrubbed(item) for item in value]
        return value
    if isinstance(value, tuple):
        return tuple(_scrubbed(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            setattr(value, field.name, _scrubbed(getattr(value, field.name)))
        return value
    if type(value).__module__.startswith("_pytest.") and hasattr(value, "__dict__"):
        for name, item in vars(value).items():
            setattr(value, name, _scrubbed(item))
    return value


def scrub_report(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.sections = [(title, scrub(text)) for title, text in report.sections]
    if report.longrepr is None:
        return
    try:
        report.longrepr = _scrubbed(report.longrepr)
    except (AttributeError, TypeError, dataclasses.FrozenInstanceError):
        # a representation we cannot change in place: keep its text, scrubbed
        report.longrepr = scrub(str(report.longrepr))
