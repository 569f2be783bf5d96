"""`cathouse-branch doctor`: one line per check, with a fix for each that fails.

The checks map the seed's troubleshooting list onto things a program can verify:
"too many connections" → the pool budget; "SSL connection closed" / "password
authentication failed" → the URLs' form and a live connection; "relation already exists"
→ each service's revision against its head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from cathouse_harness.config.settings import INIT_HINT, TOOL_TABLE, Settings, load_settings
from cathouse_harness.errors import ConfigError, HarnessError
from cathouse_harness.support.redact import redact_url

Status = Literal["ok", "warn", "fail", "config"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def exit_code(self) -> int:
        return {"ok": 0, "warn": 0, "fail": 1, "config": 2}[self.status]

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "config": "FAIL"}[self.status]
        fix = f" — fix: {self.fix}" if self.fix and self.status != "ok" else ""
        return f"[{mark}] {self.name}: {self.detail}{fix}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def check_urls(env: dict[str, str], settings: Settings) -> list[Check]:
    pooled, direct = env.get("DATABASE_URL"), env.get("MIGRATION_DATABASE_URL")
    if not pooled or not direct:
        return [Check("urls", "warn", "no DATABASE_URL / MIGRATION_DATABASE_URL in .env",
                      "run cathouse-branch up")]
    checks = []
    found = (_malformed(pooled, "DATABASE_URL"), _malformed(direct, "MIGRATION_DATABASE_URL"))
    malformed = [check for check in found if check is not None]
    if malformed:
        return malformed
    p, d = urlsplit(pooled), urlsplit(direct)
    if not p.scheme.startswith("postgresql+asyncpg"):
        checks.append(Check("DATABASE_URL", "fail", f"scheme {p.scheme} is not postgresql+asyncpg",
                            "the services use asyncpg: postgresql+asyncpg://…"))
    elif (p.hostname, p.port) == (d.hostname, d.port):
        checks.append(Check("DATABASE_URL", "fail", "points at the same address as the direct URL",
                            "use the pooled endpoint (host with -pooler) for DATABASE_URL"))
    elif settings.backend == "neon" and "-pooler" not in (p.hostname or ""):
        checks.append(Check("DATABASE_URL", "fail", "host has no -pooler: not Neon's pooled endpoint",
                            "use the pooled connection string"))
    else:
        checks.append(Check("DATABASE_URL", "ok", f"pooled endpoint {p.hostname}:{p.port or 5432}"))
    if settings.backend == "neon" and "-pooler" in (d.hostname or ""):
        checks.append(Check("MIGRATION_DATABASE_URL", "fail", "points at the pooler",
                            "migrations need the direct endpoint (host without -pooler)"))
    else:
        checks.append(Check("MIGRATION_DATABASE_URL", "ok", f"direct endpoint {d.hostname}:{d.port or 5432}"))
    query = parse_qs(p.query)
    if settings.backend == "neon" and not ({"ssl", "sslmode"} & set(query)):
        checks.append(Check("tls", "warn", "DATABASE_URL asks for no TLS", "add ssl=require"))
    return checks


def _malformed(url: str, key: str) -> Check | None:
    """A URL the checks below cannot even take apart (a port that is not a number, say)."""
    try:
        urlsplit(url).port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        return Check(key, "config", f"{redact_url(url)!r} is not a valid URL ({exc})",
                     "fix it in .env, or run cathouse-branch up to write it again")
    return None


def check_revisions(settings: Settings, direct_url: str) -> Check:
    """Each service's revisions in the database against its target's (every head for a
    history with several): at, behind, ahead or diverged, each with its own fix."""
    from cathouse_harness.migrate.all_services import standings

    try:
        found = standings(settings, direct_url)
    except HarnessError as exc:
        return Check("revisions", "fail", exc.message,
                     exc.hint or "check MIGRATION_DATABASE_URL and the branch")
    except Exception as exc:  # a connection failure: say so in one line
        return Check("revisions", "fail", f"{type(exc).__name__}: {exc}",
                     "check MIGRATION_DATABASE_URL; password errors mean a stale .env (cathouse-branch up)")
    off = {name: s for name, s in found.items() if s.state != "at"}
    if not off:
        return Check("revisions", "ok", f"{len(found)} service(s) at their target")
    detail = "; ".join(f"{name} {s.describe()}" for name, s in off.items())
    states = {s.state for s in off.values()}
    if states == {"behind"}:
        fix = "cathouse-branch migrate"
    elif states == {"ahead"}:
        fix = ("the branch was migrated past these scripts or this target: check out that code, "
               "set the service's target, or cathouse-branch reset")
    else:
        fix = "cathouse-branch reset makes the branch again from its parent and migrates it"
    return Check("revisions", "fail", detail, fix)


def run_checks(
    project_dir: Path, *, env_file: Path, backend: str | None = None, storage: str | None = None
) -> list[Check]:
    checks: list[Check] = []
    try:
        settings = load_settings(project_dir, options={"backend": backend, "local_storage": storage})
    except ConfigError as exc:
        return [Check("configuration", "config", exc.message, exc.hint or "")]
    if settings.services:
        names = ", ".join(s.name for s in settings.services)
        checks.append(Check("configuration", "ok", f"{len(settings.services)} service(s): {names}"))
    else:
        checks.append(Check("configuration", "warn", f"no services in [{TOOL_TABLE}]", INIT_HINT))
    checks.append(Check("pool budget", "ok",
                        f"{settings.pool_budget} of {settings.connection_limit} connections"))
    checks.extend(_check_backend(settings))
    if settings.backend == "embedded":
        # the server's own search, so doctor never says "not installed" for one it would use
        from cathouse_harness.local.data.pgbouncer import find_pgbouncer

        path = find_pgbouncer()
        checks.append(
            Check("pgbouncer", "ok", f"found {path}: pooled URLs run through PgBouncer")
            if path
            else Check("pgbouncer", "warn",
                       "not installed: pooled URLs reach PostgreSQL directly",
                       "apt-get install pgbouncer (Debian/Ubuntu) to test the pooled path")
        )
    from cathouse_harness.config.envfile import read_env_file

    try:
        env = read_env_file(env_file)
    except ConfigError as exc:
        checks.append(Check(".env", "config", exc.message, "fix its permissions"))
        return checks
    url_checks = check_urls(env, settings)
    checks.extend(url_checks)
    unusable = any(check.status == "config" for check in url_checks)
    if env.get("MIGRATION_DATABASE_URL") and settings.migrating_services and not unusable:
        checks.append(check_revisions(settings, env["MIGRATION_DATABASE_URL"]))
    return checks


def _check_backend(settings: Settings) -> list[Check]:
    if settings.backend == "embedded":
        return _check_embedded(settings)
    return [_check_neon(settings)]


def _check_embedded(settings: Settings) -> list[Check]:
    from cathouse_harness.local.discovery import probe, running_server

    info = running_server(settings.home, settings.local_storage)
    if info is None:
        return [Check("backend", "ok", "embedded default; not running (starts on first use)")]
    checks = [Check("backend", "ok", f"embedded default answering at {info.api_host}")]
    answer = probe(info.api_host, info.api_key.reveal())
    if answer is not None and "host_problem" in answer:
        checks.append(check_endpoint_hosts(answer["host_problem"], answer.get("names_problem")))
    if answer is not None and isinstance(answer.get("features"), dict):
        checks.append(check_neon_features(settings, answer["features"]))
    return checks


def check_neon_features(settings: Settings, published: dict[str, object]) -> Check:
    """What Neon has that the running server's PostgreSQL lacks: ICU, and the extensions
    the project's migrations create (`cathouse_harness.migrate.features`); and what they
    create that Neon does not offer."""
    from cathouse_harness.local.sim.neon_features import REMEDY, ServerFeatures, offered_by_neon
    from cathouse_harness.migrate.features import ICU, features_used

    names = published.get("extensions")
    features = ServerFeatures(
        frozenset(str(n) for n in names) if isinstance(names, list) else frozenset(),
        bool(published.get("icu")),
        str(published.get("postgres") or "the local server's PostgreSQL"),
    )
    used = features_used(settings)
    root = settings.project_root

    def where(name: str) -> str:
        label = "ICU collations" if name == ICU else name
        path = used.get(name)
        if path is None:
            return label
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        return f"{label} ({shown})"

    foreign = [where(n) for n in sorted(used) if n != ICU and not offered_by_neon(n)]
    if foreign:
        return Check("neon features", "fail",
                     "migrations create extensions Neon does not offer: " + ", ".join(foreign),
                     "use one Neon lists (if Neon offers it now: CATHOUSE_EXTRA_EXTENSIONS)")
    missing = [ICU if gap == "ICU collations" else gap for gap in features.missing([*used, ICU])]
    if not missing:
        return Check("neon features", "ok",
                     f"{features.postgres} has ICU and every extension the migrations create")
    status: Status = "fail" if any(gap in used for gap in missing) else "warn"
    shown = [where(gap) for gap in missing]
    return Check("neon features", status,
                 f"{features.postgres} lacks what Neon has: " + ", ".join(shown), REMEDY)


def check_endpoint_hosts(problem: object, names_problem: object = None) -> Check:
    """Whether a URL built from an endpoint's `host` or `pooler_host` alone (port 5432)
    connects, as the running server found when it opened its endpoints
    (`cathouse_harness.local.data.hosts`), and whether a pooled host can be made from `host` by
    inserting `-pooler` (names mode, `cathouse_harness.local.data.names`)."""
    if not problem and names_problem:
        return Check(
            "endpoint hosts", "ok",
            "URLs built from an endpoint's host or pooler_host connect (port 5432); a pooled"
            f" host made by inserting -pooler into host does not ({names_problem})",
            "where *.localhost resolves (systemd's nss-myhostname or resolved) endpoints are"
            " named <id>.local.localhost and -pooler works",
        )
    if not problem:
        return Check(
            "endpoint hosts", "ok", "URLs built from an endpoint's host connect (port 5432)"
        )
    return Check(
        "endpoint hosts",
        "warn",
        f"URLs built from an endpoint's host alone do not connect on this machine ({problem});"
        " connection_uri (127.0.0.1 with the endpoint's ports, and the URLs cathouse-branch"
        " writes) keeps working",
        "use connection_uri, or free port 5432 on 127.0.0.0/8 and restart the local server",
    )


def _check_neon(settings: Settings) -> Check:
    from cathouse_harness.neon.backend import connect_backend, open_client
    from cathouse_harness.support.sync import run_sync

    try:
        backend = connect_backend(settings)

        async def probe() -> None:
            async with open_client(backend) as client:
                await client.check_auth()
                await client.get_project(backend.project_id)

        run_sync(probe())
    except HarnessError as exc:
        return Check("backend", "fail", exc.message, "check NEON_API_KEY and NEON_PROJECT_ID")
    return Check("backend", "ok", f"Neon API answers; project {settings.project_id} found")
