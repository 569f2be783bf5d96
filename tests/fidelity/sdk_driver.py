"""Neon's Python SDK (`neon-api`) through every call that applies to one project, run by
the interpreter that has the SDK (`check.py` installs it in a venv of its own, outside
this repository); imports nothing of the harness. Prints one JSON line per call:
{"call", "ok", "detail"}. The API's host, key and project come from NEON_API_HOST,
NEON_API_KEY and NEON_PROJECT_ID, as `cathouse-branch emulator` prints them."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from neon_api import NeonAPI  # type: ignore[import-not-found]


def _plain(value: Any) -> Any:
    """An answer as plain data: the SDK's models are (pydantic) dataclasses in 0.3.0,
    pydantic models elsewhere."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    for name in ("model_dump", "dict"):
        method = getattr(value, name, None)
        if callable(method):
            return method()
    return value


def main() -> int:
    sdk = NeonAPI(os.environ["NEON_API_KEY"], base_url=os.environ["NEON_API_HOST"].rstrip("/") + "/")
    project = os.environ["NEON_PROJECT_ID"]
    found: dict[str, Any] = {}

    def call(name: str, act: Callable[[], Any], keep: str | None = None) -> Any:
        try:
            answer = _plain(act())
        except Exception as exc:  # what fails is the result, whatever it is
            print(json.dumps({"call": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}))
            return None
        if keep is not None:
            found[keep] = answer
        print(json.dumps({"call": name, "ok": True, "detail": ""}))
        return answer

    def settle() -> None:
        """Until the project's operations are done, as Neon's clients must wait (423)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ops = _plain(sdk.operations(project)).get("operations", [])
            # the SDK's models give the status as an Enum, other versions as a string
            statuses = {getattr(op.get("status"), "value", op.get("status")) for op in ops}
            if statuses <= {"finished", "failed", "skipped", "cancelled"}:
                return
            time.sleep(0.1)
        print(f"operations still running after 30 s: {sorted(map(str, statuses))}", file=sys.stderr)

    def get(path: str) -> Any:
        value: Any = found
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return value

    call("me", sdk.me)
    call("projects", sdk.projects)
    call("projects(shared=True)", lambda: sdk.projects(shared=True))
    call("project", lambda: sdk.project(project))
    call("project_update", lambda: sdk.project_update(project, project={"name": "fidelity"}))
    call("api_keys", sdk.api_keys)
    call("project_permissions", lambda: sdk.project_permissions(project))
    call("branches", lambda: sdk.branches(project), keep="branches")
    main_id = next(b["id"] for b in get("branches")["branches"] if b.get("default") or b.get("primary"))
    call("branch", lambda: sdk.branch(project, main_id))
    made = call("branch_create", lambda: sdk.branch_create(
        project, branch={"name": "fidelity-sdk"}, endpoints=[{"type": "read_write"}]), keep="made")
    settle()
    if made is None:
        return 0
    branch = get("made.branch.id")
    call("branch_update", lambda: sdk.branch_update(project, branch, branch={"name": "fidelity-sdk-2"}))
    call("endpoints", lambda: sdk.endpoints(project), keep="endpoints")
    # the SDK's model of a create's answer (BranchOperations) leaves its endpoints out
    endpoint = next(e["id"] for e in get("endpoints.endpoints") if e["branch_id"] == branch)
    call("endpoint", lambda: sdk.endpoint(project, endpoint))
    call("endpoint_update",
         lambda: sdk.endpoint_update(project, endpoint, endpoint={"suspend_timeout_seconds": 600}))
    settle()
    call("endpoint_suspend", lambda: sdk.endpoint_suspend(project, endpoint))
    settle()
    call("endpoint_start", lambda: sdk.endpoint_start(project, endpoint))
    settle()
    reader = call("endpoint_create", lambda: sdk.endpoint_create(
        project, endpoint={"branch_id": branch, "type": "read_only"}), keep="reader")
    settle()
    if reader is not None:
        call("endpoint_delete", lambda: sdk.endpoint_delete(project, get("reader.endpoint.id")))
        settle()
    call("roles", lambda: sdk.roles(project, branch))
    call("role_create", lambda: sdk.role_create(project, branch, "fidelity_role"))
    settle()
    call("role", lambda: sdk.role(project, branch, "fidelity_role"))
    call("role_password_reveal", lambda: sdk.role_password_reveal(project, branch, "fidelity_role"))
    call("role_password_reset", lambda: sdk.role_password_reset(project, branch, "fidelity_role"))
    settle()
    call("databases", lambda: sdk.databases(project, branch))
    call("database_create", lambda: sdk.database_create(
        project, branch, database={"name": "fidelity_db", "owner_name": "fidelity_role"}))
    settle()
    call("database", lambda: sdk.database(project, branch, "fidelity_db"))
    call("database_update", lambda: sdk.database_update(
        project, branch, "fidelity_db", database={"name": "fidelity_db2"}))
    settle()
    call("database_delete", lambda: sdk.database_delete(project, branch, "fidelity_db2"))
    settle()
    call("role_delete", lambda: sdk.role_delete(project, branch, "fidelity_role"))
    settle()
    # the reference requires both names (a call without them is a 400 on Neon too)
    names = {"database_name": "neondb", "role_name": "neondb_owner"}
    call("connection_uri", lambda: sdk.connection_uri(project, **names))
    call("connection_uri(pooled=True)", lambda: sdk.connection_uri(project, pooled=True, **names))
    ops = call("operations", lambda: sdk.operations(project), keep="ops")
    if ops is not None:
        call("operation", lambda: sdk.operation(project, get("ops.operations.0.id")))
    if call("branch_set_as_primary", lambda: sdk.branch_set_as_primary(project, branch)) is not None:
        settle()
        sdk.branch_set_as_primary(project, main_id)  # back, so the delete is allowed
        settle()
    call("branch_delete", lambda: sdk.branch_delete(project, branch))
    settle()
    return 0


if __name__ == "__main__":
    sys.exit(main())
