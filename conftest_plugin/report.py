"""What the plugin prints: one header line and a short terminal summary."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from cathouse_harness.config.settings import Settings
from cathouse_harness.support.redact import redact_url

# "handoff": an xdist worker waiting for the branch its controller prepares
_STEPS = (
    "backend", "parent", "template", "migrate", "fork", "worker database", "handoff", "reset",
    "teardown",
)


# the end of a run of a configured project in which no test had a branch: without it
# such a run is green while its tests never touched one (issue #23, "never silently green")
NO_BRANCH_LINE = (
    "cathouse-harness: no test used a branch: [tool.cathouse_harness] is configured, but "
    "every test ran without one. Map the settings your app reads in "
    "[tool.cathouse_harness.env], or ask for the neon_branch fixture "
    '(docs/your-project.md, "Your app reads its own settings")'
)


# psycopg's DuplicatePreparedStatement / InvalidSqlStatementName and asyncpg's
# equivalents all quote PostgreSQL's own message
_PREPARED_STATEMENT_FAILURE = re.compile(r'prepared statement "[^"]*" (?:already exists|does not exist)')


def pooler_hint(reports: Iterable[Mapping[str, Any]], failures: Iterable[str]) -> str | None:
    """One line for failures that a pooler without named prepared statements causes and
    Neon's pooler would not, when this run's pooled endpoints have that gap."""
    gaps = {str(r.get("pooler_gap")) for r in reports if r.get("pooler_gap")}
    if not gaps or not any(_PREPARED_STATEMENT_FAILURE.search(text) for text in failures):
        return None
    return (
        f"cathouse-harness: a test failed on a prepared statement: the pooled endpoints run "
        f"{sorted(gaps)[0]}, which cannot carry named prepared statements as Neon's pooler "
        "(PgBouncer 1.21+) does. Install PgBouncer 1.21 or newer, or set "
        'pooler_mode = "session" in [tool.cathouse_harness] (docs/your-project.md, '
        '"Prepared statements on the pooled endpoint")'
    )


def header_line(settings: Settings) -> str:
    if settings.backend == "neon":
        where = f"Neon ({settings.api_host}), project {settings.project_id}"
    else:
        where = "embedded default (local Neon API, started on first use)"
    return (
        f"cathouse-harness: backend {where}, parent branch {settings.parent_branch}, "
        f"ttl {int(settings.branch_ttl.total_seconds())} s"
    )


def connect_command(name: str, database: str | None = None) -> str:
    """A command that connects to a branch (to `database` on it, an xdist worker's) and
    never puts its password on the screen."""
    other = f" --database '{database}'" if database else ""
    return f"psql \"$(cathouse-branch url '{name}'{other})\""


def summary_lines(
    reports: Iterable[Mapping[str, Any]],
    run_id: str,
    swept: list[str],
    kept_urls: Mapping[str, str] | None,
    show_secrets: bool,
) -> list[str]:
    reports = list(reports)
    lines = ["", f"cathouse-harness summary (run {run_id})"]
    first = reports[0] if reports else {}
    if first:
        lines.append(
            f"  backend {first.get('backend') or '?'}, project {first.get('project_id') or '?'}, "
            f"parent {first.get('parent') or '?'}"
        )
    templates = {str(r.get("template")) for r in reports if r.get("template")}
    for template in sorted(templates):
        reused = [r.get("template_reused") for r in reports if r.get("template") == template]
        how = "reused" if all(reused) else "built by this run"
        lines.append(f"  template {template}: {how}")
    for report in reports:
        for branch in report.get("branches", []):
            lines.append(f"  branch {branch}")
        if report.get("spare") == "claimed":
            lines.append("  (the first of them: this machine's spare, claimed instead of a fork)")
    totals: dict[str, float] = {}
    for report in reports:
        for step, seconds in report.get("timings", {}).items():
            totals[step] = max(totals.get(step, 0.0), seconds)
    if totals:
        shown = ", ".join(f"{s} {totals[s]:.2f}s" for s in _STEPS if s in totals)
        lines.append(f"  timings (slowest worker): {shown}")
    calls = sum(int(r.get("api_calls", 0)) for r in reports)
    retries = sum(int(r.get("api_retries", 0)) for r in reports)
    if reports:
        lines.append(f"  API calls {calls}, retries {retries}")
    kept = [k for r in reports for k in r.get("kept", [])]
    kept_diffs = {name: diff for r in reports for name, diff in r.get("kept_diffs", {}).items()}
    for branch in kept:
        name = branch.split(" ")[0]
        database = branch.partition(" database ")[2] or None
        lines.append(f"  kept for inspection: {branch} (delete: cathouse-branch down '{name}')")
        lines.append(f"  connect: {connect_command(name, database)}")
        other = f" --database '{database}'" if database else ""
        lines.append(f"  schema changes since its template: cathouse-branch diff '{name}'{other}")
        lines.extend(_diff_lines(kept_diffs.get(name)))
    if kept_urls and show_secrets:
        lines.append(f"  direct URL: {kept_urls['direct']}")
        lines.append(f"  pooled URL: {kept_urls['pooled']}")
    elif kept_urls:
        lines.append(f"  direct URL: {redact_url(kept_urls['direct'])} (--cathouse-show-secrets shows it)")
    for branch in (b for r in reports for b in r.get("delete_failed", [])):
        name = branch.split(" ")[0]
        lines.append(
            f"  DELETE FAILED, branch left: {branch} (remove it: cathouse-branch down '{name}')"
        )
    if swept:
        lines.append(f"  removed {len(swept)} leftover branch(es) of this run: {', '.join(swept)}")
    return lines


# a diff longer than this is cut: the command above prints it whole
_DIFF_LINES = 40


def _diff_lines(diff: str | None) -> list[str]:
    """A kept branch's schema diff (`diff_kept`), indented under its branch."""
    if diff is None:
        return []
    if not diff.strip():
        return ["    (no schema change against its template)"]
    body = diff.rstrip("\n").splitlines()
    shown = [f"    {line}" for line in body[:_DIFF_LINES]]
    if len(body) > _DIFF_LINES:
        shown.append(f"    … {len(body) - _DIFF_LINES} more lines")
    return shown
