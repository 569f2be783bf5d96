"""Neon's GitHub actions' own steps against `cathouse-branch emulator`, by their inputs only
(#25): create-branch-action and schema-diff-action (JavaScript: their `dist/index.js`
under node, inputs as INPUT_* variables), delete-branch-action and reset-branch-action
(composite: their bash steps, with `${{ inputs.* }}` filled in as GitHub's runner does).

Their code is not in this repository. The check reads it from `--actions-dir` (default
`<cache>/actions/<name>`), where `python -m tests.fidelity.check --install` clones each at
the commit pinned in ACTIONS; where GitHub cannot be reached, copy them there by hand (a
checkout of that commit). What a step does beyond Neon's API is left to the runner and
not done here: `actions/setup-node` (the machine's node runs them), the composite
actions' `npm i -g neonctl@…` (the check runs the pinned neonctl of that line, installed
by --install, through a `neonctl` on PATH that adds `--no-analytics`, so no step
contacts Neon's analytics), and schema-diff-action's pull-request comment (its own
`ENVIRONMENT=development` switch skips it; the diff is still computed and output).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Each action at the commit the check was last run against, and for the composite ones
# the neonctl their `npm i -g` line installs (reset-branch-action asks for `neonctl@v2`:
# the newest 2.x when measured).
ACTIONS = {
    "create-branch-action": "fb620d43d4c565abaf088b848a4e28e5c4ea4d9c",
    "delete-branch-action": "aed9ab1ec86e380312c7b0a9e29942e41349adf6",
    "reset-branch-action": "82f449ce42416982f6b28fa4ed27bc67be24583a",
    "schema-diff-action": "d324284e976c8607ed2cb494aaca36b6507d26b7",
}
STEP_NEONCTL = {"2.22.0": "2.22.0", "v2": "2.47.0"}
YAML_JSON = Path(__file__).with_name("yaml_json.cjs")
# What a runner gives every step of a pull request's workflow (create-branch-action turns
# it into the branch's annotations); nothing here is sent anywhere but the emulator.
GITHUB_CONTEXT = {
    "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "cathouse/fidelity",
    "GITHUB_EVENT_NAME": "pull_request", "GITHUB_ACTOR": "fidelity", "GITHUB_SHA": "0" * 40,
    "GITHUB_REF": "refs/pull/25/merge", "GITHUB_ACTION": "fidelity", "GITHUB_SERVER_URL": "https://github.invalid",
    "GITHUB_API_URL": "https://api.github.invalid",
}
PULL_REQUEST_EVENT = {"pull_request": {"number": 25, "title": "fidelity", "head": {"ref": "fidelity"}}}
_INPUT = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")
# after a reset to the parent the branch's own table is gone
_RESET_LEFT_NO_TABLE = (
    "DO $$ BEGIN IF to_regclass('fidelity_pr') IS NOT NULL"
    " THEN RAISE 'the reset kept the table'; END IF; END $$"
)
# a step names each secret it prints to the runner, which masks it; we do the masking
_ADD_MASK = re.compile(r"::add-mask::\S*")
_NPM_NEONCTL = re.compile(r"npm i(?:nstall)? -g (?:--ignore-scripts )?neonctl@(\S+)")


@dataclass(frozen=True)
class StepResult:
    ok: bool
    outputs: Mapping[str, str]
    detail: str = ""


def neonctl_path(cache: Path, version: str) -> Path:
    return cache / f"neonctl-{version}" / "node_modules" / ".bin" / "neonctl"


def missing_actions(actions_dir: Path, cache: Path) -> list[str]:
    """What the actions' run needs and is not here (empty: it can run)."""
    gone = [name for name in ACTIONS if not (actions_dir / name).is_dir()]
    versions = sorted(set(STEP_NEONCTL.values()))
    gone += [f"neonctl {v}" for v in versions if not neonctl_path(cache, v).exists()]
    return gone


def clone_actions(actions_dir: Path) -> list[str]:
    """Each action at its pinned commit from GitHub; the names that could not be fetched."""
    failed = []
    for name, commit in ACTIONS.items():
        target = actions_dir / name
        if target.is_dir():
            continue
        url = f"https://github.com/neondatabase/{name}.git"
        steps = [["git", "init", "-q", str(target)],
                 ["git", "-C", str(target), "fetch", "-q", "--depth", "1", url, commit],
                 ["git", "-C", str(target), "checkout", "-q", "FETCH_HEAD"]]
        if any(subprocess.run(step, capture_output=True, timeout=300).returncode for step in steps):
            shutil.rmtree(target, ignore_errors=True)
            failed.append(name)
    return failed


def _action_yml(action: Path, node_path: str) -> dict:
    yml = next(p for p in (action / "action.yml", action / "action.yaml") if p.exists())
    done = subprocess.run(["node", str(YAML_JSON), str(yml)], env={**os.environ, "NODE_PATH": node_path},
                          capture_output=True, text=True, check=True)
    parsed: dict = json.loads(done.stdout)
    return parsed


def _inputs(spec: dict, given: Mapping[str, str]) -> dict[str, str]:
    """The action's defaults overlaid with `given`, as the runner resolves them (a default
    that is an expression, like `${{ github.token }}`, is not ours to resolve: empty)."""
    values = {name: str(meta.get("default", "")) for name, meta in (spec.get("inputs") or {}).items()}
    values = {k: "" if "${{" in v else v for k, v in values.items()}
    unknown = set(given) - set(values)
    if unknown:
        raise ValueError(f"inputs the action does not declare: {sorted(unknown)}")
    return {**values, **given}


def _outputs(file: Path) -> dict[str, str]:
    """GITHUB_OUTPUT as written by `echo k=v` and by @actions/core's `k<<delimiter` form."""
    found: dict[str, str] = {}
    lines = iter(file.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, _, end = line.partition("<<")
            body = []
            for inner in lines:
                if inner == end:
                    break
                body.append(inner)
            found[key] = "\n".join(body)
        elif "=" in line:
            key, _, value = line.partition("=")
            found[key] = value
    return found


def _neonctl_on_path(bin_dir: Path, binary: Path, config: Path) -> None:
    """A `neonctl` for a step's shell: the pinned one, analytics off, its own config dir."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "neonctl"
    shim.write_text(f'#!/bin/sh\nexec "{binary}" "$@" --no-analytics --config-dir "{config}"\n')
    shim.chmod(0o755)


def run_action(name: str, given: Mapping[str, str], *, actions_dir: Path, cache: Path, node_path: str,
               api_key: str, work: Path, env: Mapping[str, str] | None = None) -> StepResult:
    """One run of action `name` with inputs `given`; its outputs, or why it failed."""
    action = actions_dir / name
    spec = _action_yml(action, node_path)
    inputs = _inputs(spec, given)
    run_dir = work / f"{name}-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    output_file = run_dir / "github_output"
    output_file.touch()
    event = run_dir / "event.json"
    event.write_text(json.dumps(PULL_REQUEST_EVENT))
    base = {**os.environ, **GITHUB_CONTEXT, **(env or {}), "GITHUB_OUTPUT": str(output_file),
            "GITHUB_EVENT_PATH": str(event), "RUNNER_TEMP": str(run_dir)}
    runs = spec["runs"]
    if runs["using"].startswith("node"):
        step_env = {**base, **{f"INPUT_{k.replace(' ', '_').upper()}": v for k, v in inputs.items()}}
        done = subprocess.run(["node", str(action / runs["main"])], cwd=run_dir, env=step_env,
                              capture_output=True, text=True, timeout=300)
        return _result(done, output_file, api_key)
    for step in runs["steps"]:
        if "uses" in step:
            continue  # actions/setup-node: the machine's node
        script = step["run"]
        pinned = _NPM_NEONCTL.search(script)
        if pinned:
            version = STEP_NEONCTL[pinned.group(1)]
            _neonctl_on_path(run_dir / "bin", neonctl_path(cache, version), run_dir / "neon-config")
            (run_dir / "neon-config").mkdir(exist_ok=True)
            continue
        fill: Callable[[str], str] = lambda text: _INPUT.sub(lambda m: inputs[m.group(1)], text)  # noqa: E731
        step_env = {**base, **{k: fill(str(v)) for k, v in (step.get("env") or {}).items()}}
        step_env["PATH"] = f"{run_dir / 'bin'}{os.pathsep}{step_env.get('PATH', '')}"
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", fill(script)],
                              cwd=run_dir, env=step_env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return _result(done, output_file, api_key)
    return StepResult(True, _outputs(output_file))


def _result(done: subprocess.CompletedProcess[str], output_file: Path, api_key: str) -> StepResult:
    outputs = _outputs(output_file)
    if done.returncode == 0:
        return StepResult(True, outputs)
    text = _ADD_MASK.sub("::add-mask::***", done.stderr.strip() or done.stdout.strip())
    text = text[-300:].replace(api_key, "***")
    return StepResult(False, outputs, text or f"exit status {done.returncode}")


def drive(api: Mapping[str, str], *, actions_dir: Path, cache: Path, node_path: str, work: Path,
          connects: Callable[..., str]) -> list[tuple[str, bool, str]]:
    """A pull request's life as Neon's actions see it: its branch created (then reused),
    a table made on it, the schema diff against the parent, a reset to the parent, the
    delete. Each URL an action outputs is connected to. One (call, ok, detail) per step."""
    rows: list[tuple[str, bool, str]] = []
    host = {"api_key": api["NEON_API_KEY"], "api_host": api["NEON_API_HOST"],
            "project_id": api["NEON_PROJECT_ID"]}
    Check = Callable[[Mapping[str, str]], str]  # noqa: N806 (a local alias)

    def step(call: str, name: str, given: Mapping[str, str], then: Check = lambda _: "",
             env: Mapping[str, str] | None = None) -> Mapping[str, str]:
        done = run_action(name, {**host, **given}, actions_dir=actions_dir, cache=cache, node_path=node_path,
                          api_key=api["NEON_API_KEY"], work=work, env=env)
        detail = done.detail or then(done.outputs)
        rows.append((call, not detail, detail))
        return done.outputs

    def urls_connect(*keys: str, statement: str = "SELECT 1") -> Callable[[Mapping[str, str]], str]:
        def check(outputs: Mapping[str, str]) -> str:
            for key in keys:
                if not outputs.get(key):
                    return f"no output {key}: {sorted(outputs)}"
                why = connects(outputs[key], statement=statement)
                if why:
                    return f"{key}: {why}"
            return ""
        return check

    pr = "preview/pr-25-fidelity"
    new_urls = urls_connect("db_url", "db_url_pooled")
    made = step("create-branch-action", "create-branch-action", {"branch_name": pr},
                then=lambda out: _said(out, "created", "true") or new_urls(out))
    step("create-branch-action (exists: reused)", "create-branch-action", {"branch_name": pr},
         then=lambda out: _said(out, "created", "false") or _said(out, "branch_id", made.get("branch_id")))
    if made.get("db_url"):
        connects(made["db_url"], statement="CREATE TABLE fidelity_pr (id int)")
    # the token is for the pull-request comment, which ENVIRONMENT=development skips
    step("schema-diff-action", "schema-diff-action", {"compare_branch": pr, "github-token": "unused"},
         then=_diff_names_the_table, env={"ENVIRONMENT": "development"})
    step("reset-branch-action --parent", "reset-branch-action", {"branch": pr, "parent": "true"},
         then=urls_connect("db_url", "db_url_with_pooler",
                           statement=_RESET_LEFT_NO_TABLE))
    step("delete-branch-action", "delete-branch-action", {"branch": pr})
    return rows


def _said(outputs: Mapping[str, str], key: str, expected: str | None) -> str:
    return "" if outputs.get(key) == expected else f"output {key}={outputs.get(key)!r}, expected {expected!r}"


def _diff_names_the_table(outputs: Mapping[str, str]) -> str:
    diff = outputs.get("diff", "")
    return "" if "fidelity_pr" in diff else f"no table in the diff: {diff[:200]!r}"
