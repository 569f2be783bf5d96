"""A rerunnable fidelity check (#25): Neon's own clients and GitHub actions, pointed at
`cathouse-branch emulator` by configuration only, through every call that applies to one
project; prints `works` / `fails` / `differs` per call and the counts.

    python -m tests.fidelity.check --install   # once: npm, PyPI and GitHub, into the cache below
    python -m tests.fidelity.check             # any time after: this machine only

The clients are pinned (NEONCTL_VERSION, NEON_API_VERSION, TS_SDK_VERSION) and installed
outside the repository, in `--cache` (default ~/.cache/cathouse-harness-fidelity):
neonctl and the TypeScript SDK `@neondatabase/api-client` with npm, the Python SDK
`neon-api` in a venv of its own. Neon's actions (tests/fidelity/actions.py) are read from
`--actions-dir` (default <cache>/actions), where --install clones them at pinned commits.
Running the check contacts no address outside this machine: every neonctl runs with
`--no-analytics` and a config directory of its own, against the emulator's loopback API.
tests/fidelity/test_fidelity.py runs it when the clients are already installed there,
and skips, saying how to install them, otherwise (the suite never installs anything).

Endpoint hosts: `--hosts names` or `--hosts addresses` runs the emulator in that mode
(`CATHOUSE_LOCAL_HOSTS`; default: its own choice). Names mode needs 127.0.0.1:5432 for
its router; where another server holds it, a network namespace of the check's own has
a loopback of its own (as root: `unshare -n sh -c 'ip link set lo up && python -m
tests.fidelity.check --hosts names'`).

Exit status: 0 when every call works or is a known difference (KNOWN: asks for what
Neon's reference does not have, NOT_IN_REFERENCE, or for a feature the local server does
not emulate, NOT_EMULATED), 1 when some fail, 2 when the clients are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from tests.fidelity import actions

NEONCTL_VERSION = "5.0.1"
NEON_API_VERSION = "0.3.0"
TS_SDK_VERSION = "2.7.3"
# installed next to the TypeScript SDK: a JSON Schema validator for the OpenAPI document
# the SDK ships, and a YAML parser for that document and the actions' action.yml
TS_SDK_HELPERS = ("ajv@8.20.0", "yaml@2.9.1")
DEFAULT_CACHE = Path.home() / ".cache" / "cathouse-harness-fidelity"
SDK_DRIVER = Path(__file__).with_name("sdk_driver.py")
TS_DRIVER = Path(__file__).with_name("ts_driver.cjs")
_SECRET_IN_URL = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


# Calls that fail here because the client asks for what Neon's API v2 reference does not
# have (the local server serves the reference, tests/local/neon_schema.py); each is
# printed as `differs` with why, and is no failure of the check.
NOT_IN_REFERENCE = {
    ("neon-api", "role_password_reveal"):
        "the SDK sends POST; the reference has GET .../roles/{role_name}/reveal_password",
    ("neon-api", "branch_set_as_primary"):
        "the SDK asks for .../set_as_primary; the reference has only .../set_as_default",
}
# Calls for features of a Neon project the local server does not emulate (docs/embedded.md,
# the divergence table): each answers 404, printed as `differs` with why.
_NOT_EMULATED_WHY = {
    "getProjectAdvisorSecurityIssues": "the project advisor (it needs the Data API): not emulated",
    # Neon answers these two with 404 as well on a branch where the feature is not
    # enabled, the only state a local branch has; the message differs.
    "getNeonAuth": "Neon Auth: not emulated (404, as on a Neon branch without it)",
    "getProjectBranchDataApi": "the Data API: not emulated (404, as on a Neon branch without it)",
}
NOT_EMULATED = {("ts-sdk", call): why for call, why in _NOT_EMULATED_WHY.items()}
KNOWN = {**NOT_IN_REFERENCE, **NOT_EMULATED}


@dataclass(frozen=True)
class Clients:
    neonctl: Path
    sdk_python: Path
    sdk_ts: Path  # the node_modules holding @neondatabase/api-client


@dataclass(frozen=True)
class Outcome:
    client: str
    call: str
    ok: bool
    detail: str = ""


def clients(cache: Path) -> Clients:
    return Clients(
        neonctl=cache / f"neonctl-{NEONCTL_VERSION}" / "node_modules" / ".bin" / "neonctl",
        sdk_python=cache / f"neon-api-{NEON_API_VERSION}" / "bin" / "python",
        sdk_ts=cache / f"api-client-{TS_SDK_VERSION}" / "node_modules",
    )


def missing(found: Clients) -> list[str]:
    """What of the pinned clients is not installed (empty: the check can run)."""
    gone = [f"neonctl {NEONCTL_VERSION}"] if not found.neonctl.exists() else []
    if not found.sdk_python.exists() or subprocess.run(
        [str(found.sdk_python), "-c", "import neon_api"], capture_output=True
    ).returncode:
        gone.append(f"neon-api {NEON_API_VERSION}")
    if shutil.which("node") is None or not (found.sdk_ts / "@neondatabase" / "api-client").is_dir():
        gone.append(f"@neondatabase/api-client {TS_SDK_VERSION} (and node)")
    return gone


def _npm_install(npm: str, target: Path, *packages: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--prefix", str(target), "--no-audit", "--no-fund", *packages],
                   check=True)


def install(cache: Path, actions_dir: Path) -> None:
    """The pinned clients from npm and PyPI into `cache` (the only step that uses a registry),
    and Neon's actions from GitHub into `actions_dir` where GitHub can be reached."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("fidelity: npm is not installed; neonctl and the TypeScript SDK come from npm")
    _npm_install(npm, cache / f"neonctl-{NEONCTL_VERSION}", f"neonctl@{NEONCTL_VERSION}")
    _npm_install(npm, cache / f"api-client-{TS_SDK_VERSION}", f"@neondatabase/api-client@{TS_SDK_VERSION}",
                 *TS_SDK_HELPERS)
    # the neonctl each composite action's step installs; --ignore-scripts as the actions do
    for version in sorted(set(actions.STEP_NEONCTL.values())):
        _npm_install(npm, cache / f"neonctl-{version}", "--ignore-scripts", f"neonctl@{version}")
    failed = actions.clone_actions(actions_dir)
    if failed:
        print(f"fidelity: could not fetch {', '.join(failed)} from GitHub; put a checkout of each at its"
              f" commit in tests/fidelity/actions.py ACTIONS under {actions_dir} (or pass --actions-dir)",
              file=sys.stderr)
    venv = cache / f"neon-api-{NEON_API_VERSION}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"neon-api=={NEON_API_VERSION}"], check=True)


@contextmanager
def emulator(home: Path) -> Iterator[dict[str, str]]:
    """`cathouse-branch emulator` in a home of its own: NEON_API_HOST, NEON_API_KEY and
    NEON_PROJECT_ID as it prints them."""
    env = {**os.environ, "CATHOUSE_HARNESS_HOME": str(home)}
    for name in ("NEON_API_KEY", "NEON_PROJECT_ID", "NEON_API_HOST", "CATHOUSE_DATABASE", "CATHOUSE_ROLE"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-c", "from cathouse_harness.cli.commands import main; main()", "emulator"],
        cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    try:
        for line in process.stdout:
            key, _, value = line.strip().partition("=")
            if key in ("NEON_API_HOST", "NEON_API_KEY", "NEON_PROJECT_ID"):
                found[key] = value
            if len(found) == 3:
                break
        if len(found) < 3:
            raise SystemExit("fidelity: the emulator did not start")
        yield found
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _connects(url: str, *, statement: str = "SELECT 1") -> str:
    """'' when `url` connects and runs `statement`; else why not (one line)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
            conn.execute(statement)
        return ""
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[-1]


def run_neonctl(binary: Path, api: dict[str, str], work: Path) -> list[Outcome]:
    config = work / "neon-config"
    config.mkdir()
    env = {**os.environ, "CI": "true", "NO_COLOR": "1", "NEON_API_KEY": api["NEON_API_KEY"]}
    common = ["--api-host", api["NEON_API_HOST"], "--no-analytics", "--config-dir", str(config)]
    project = ["--project-id", api["NEON_PROJECT_ID"]]
    outcomes: list[Outcome] = []

    def neonctl(call: str, args: Sequence[str], then: Callable[[str], str] | None = None,
                scoped: bool = True, passed: Sequence[str] = ()) -> str:
        argv = [str(binary), *args, *common, *(project if scoped else []), *passed]
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        detail = "" if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())[-300:]
        if not detail and then is not None:
            detail = then(done.stdout.strip())
        outcomes.append(Outcome("neonctl", call, not detail, _SECRET_IN_URL.sub(r"\1***@", detail)))
        return done.stdout.strip()

    def connects(url: str) -> str:
        return _connects(url)

    def first_connects(url: str) -> str:
        """The first URL also says which endpoint hosts the emulator chose."""
        host = urlsplit(url).hostname or ""
        mode = "names" if host.endswith(".localhost") else "addresses"
        outcomes.append(Outcome("emulator", f"endpoint hosts: {mode} ({host})", True))
        return _connects(url)

    soon = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    neonctl("me", ["me"], scoped=False)
    neonctl("projects list", ["projects", "list"], scoped=False)
    neonctl("projects get", ["projects", "get", api["NEON_PROJECT_ID"]], scoped=False)
    neonctl("projects update --name", ["projects", "update", api["NEON_PROJECT_ID"], "--name", "fidelity"],
            scoped=False)
    neonctl("api-keys list", ["api-keys", "list"], scoped=False)
    neonctl("branches list", ["branches", "list"])
    neonctl("branches create", ["branches", "create", "--name", "fid-a"])
    neonctl("branches get", ["branches", "get", "fid-a"])
    neonctl("branches rename", ["branches", "rename", "fid-a", "fid-b"])
    # before its expiry is set: an expiring branch cannot be the default, on Neon too
    neonctl("branches set-default", ["branches", "set-default", "fid-b"])
    neonctl("branches set-default (back)", ["branches", "set-default", "main"])
    neonctl("branches set-expiration", ["branches", "set-expiration", "fid-b", "--expires-at", soon])
    neonctl("branches add-compute --type read_only",
            ["branches", "add-compute", "fid-b", "--type", "read_only"])
    neonctl("branches reset --parent", ["branches", "reset", "fid-b", "--parent"])
    neonctl("branches restore (from main)", ["branches", "restore", "fid-b", "main"])
    neonctl("branches schema-diff", ["branches", "schema-diff", "main", "fid-b"])
    neonctl("databases list", ["databases", "list", "--branch", "fid-b"])
    neonctl("databases create", ["databases", "create", "--branch", "fid-b", "--name", "fid_db"])
    neonctl("databases delete", ["databases", "delete", "fid_db", "--branch", "fid-b"])
    neonctl("roles list", ["roles", "list", "--branch", "fid-b"])
    neonctl("roles create", ["roles", "create", "--branch", "fid-b", "--name", "fid_role"])
    neonctl("roles delete", ["roles", "delete", "fid_role", "--branch", "fid-b"])
    neonctl("operations list", ["operations", "list"])
    neonctl("connection-string", ["connection-string"], then=first_connects)
    neonctl("connection-string --pooled", ["connection-string", "--pooled"], then=connects)
    neonctl("connection-string <branch>", ["connection-string", "fid-b"], then=connects)
    neonctl("connection-string --extended", ["connection-string", "--extended", "-o", "json"],
            then=lambda out: connects(json.loads(out)["connection_string"]))
    # a moment after the last client of main left (whole seconds, as neonctl takes them),
    # and not in the future for neonctl
    time.sleep(1.2)
    past = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.2)
    neonctl("connection-string main@<timestamp>", ["connection-string", f"main@{past}"], then=connects)
    neonctl("psql", ["psql"], passed=["--", "-Atc", "SELECT 1"])
    neonctl("status", ["status"])
    # snapshots of fid-b: restored un-finalized into a new branch, finalized, then onto fid-b at once
    neonctl("snapshots create", ["snapshots", "create", "--branch", "fid-b", "--name", "fid-snap"])
    neonctl("snapshots list", ["snapshots", "list"])
    neonctl("snapshots get", ["snapshots", "get", "fid-snap"])
    neonctl("snapshots update --name --expires-at",
            ["snapshots", "update", "fid-snap", "--name", "fid-snap2", "--expires-at", soon])
    neonctl("snapshots update --clear-expiration", ["snapshots", "update", "fid-snap2", "--clear-expiration"])
    neonctl("snapshots restore", ["snapshots", "restore", "fid-snap2", "--name", "fid-restored"])
    neonctl("snapshots finalize", ["snapshots", "finalize", "fid-restored", "--name", "fid-b-old"])
    neonctl("snapshots restore --target-branch --finalize",
            ["snapshots", "restore", "fid-snap2", "--target-branch", "fid-b", "--finalize"])
    neonctl("snapshots schedule get", ["snapshots", "schedule", "get", "--branch", "fid-b"])
    neonctl("snapshots delete", ["snapshots", "delete", "fid-snap2"])
    neonctl("branches delete", ["branches", "delete", "fid-b"])
    return outcomes


def _run_driver(client: str, argv: list[str], env: dict[str, str]) -> tuple[list[Outcome], list[dict]]:
    """A driver's JSON lines as outcomes of `client` (and the rows themselves)."""
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    outcomes = [Outcome(client, row["call"], row["ok"], row["detail"]) for row in rows]
    if done.returncode != 0:
        outcomes.append(Outcome(client, "the driver", False, done.stderr.strip()[-300:]))
    return outcomes, rows if done.returncode == 0 else []


def run_sdk(python: Path, api: dict[str, str]) -> list[Outcome]:
    return _run_driver("neon-api", [str(python), str(SDK_DRIVER)], api)[0]


def run_ts(found: Clients, api: dict[str, str]) -> list[Outcome]:
    outcomes, rows = _run_driver("ts-sdk", ["node", str(TS_DRIVER)], {**api, "NODE_PATH": str(found.sdk_ts)})
    if rows:
        matched = f"ts-sdk answers matching the OpenAPI document the SDK ships: {rows[-1]['checked']}"
        outcomes.append(Outcome("emulator", matched, True))
    return outcomes


def run_actions(found: Clients, api: dict[str, str], cache: Path, actions_dir: Path,
                work: Path) -> list[Outcome]:
    gone = actions.missing_actions(actions_dir, cache)
    if gone:
        return [Outcome("emulator", f"actions not run: {', '.join(gone)} missing in {actions_dir} / {cache}"
                        " (python -m tests.fidelity.check --install, or --actions-dir)", True)]
    rows = actions.drive(api, actions_dir=actions_dir, cache=cache, node_path=str(found.sdk_ts), work=work,
                         connects=_connects)
    return [Outcome("actions", call, ok, _SECRET_IN_URL.sub(r"\1***@", detail)) for call, ok, detail in rows]


def check(cache: Path, out: Callable[[str], None] = print, actions_dir: Path | None = None) -> list[Outcome]:
    found = clients(cache)
    with tempfile.TemporaryDirectory(prefix="cathouse-fidelity-") as scratch:
        work = Path(scratch)
        (work / "home").mkdir()
        with emulator(work / "home") as api:
            outcomes = run_neonctl(found.neonctl, api, work) + run_sdk(found.sdk_python, api)
            outcomes += run_ts(found, api)
            outcomes += run_actions(found, api, cache, actions_dir or cache / "actions", work)
    for o in outcomes:
        if o.client == "emulator":
            out(o.call)
            continue
        why = KNOWN.get((o.client, o.call)) if not o.ok else None
        word = "works" if o.ok else "differs" if why else "fails"
        out(f"{word:7}  {o.client:8}  {o.call}" + (f": {why or o.detail}" if not o.ok else ""))
    for name, version in (("neonctl", NEONCTL_VERSION), ("neon-api", NEON_API_VERSION),
                          ("ts-sdk", TS_SDK_VERSION), ("actions", "steps")):
        mine = [o for o in outcomes if o.client == name]
        if not mine:
            continue
        works = sum(o.ok for o in mine)
        fails = len(failures(mine))
        out(f"{name} {version}: {works} works / {fails} fails"
            f" / {len(mine) - works - fails} known differences")
    return outcomes


def failures(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The calls that failed for a reason other than a known difference (asking for what
    the reference lacks, or for a feature the local server does not emulate)."""
    return [o for o in outcomes if not o.ok and (o.client, o.call) not in KNOWN]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fidelity.check", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--install", action="store_true",
                        help="install the pinned clients first (npm, PyPI) and fetch Neon's actions (GitHub)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where they are (default {DEFAULT_CACHE})")
    parser.add_argument("--actions-dir", type=Path, default=None,
                        help="where Neon's actions are, one directory each (default <cache>/actions)")
    parser.add_argument("--hosts", choices=("auto", "addresses", "names"), default=None,
                        help="the emulator's endpoint hosts (CATHOUSE_LOCAL_HOSTS; default: as set, or auto)")
    args = parser.parse_args(argv)
    if args.hosts is not None:
        os.environ["CATHOUSE_LOCAL_HOSTS"] = args.hosts
    actions_dir = args.actions_dir or args.cache / "actions"
    if args.install:
        install(args.cache, actions_dir)
    gone = missing(clients(args.cache))
    if gone:
        print(f"fidelity: {', '.join(gone)} not installed in {args.cache}; "
              "run python -m tests.fidelity.check --install", file=sys.stderr)
        return 2
    outcomes = check(args.cache, actions_dir=actions_dir)
    return 1 if failures(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
