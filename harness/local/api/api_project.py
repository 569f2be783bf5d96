"""Account, project and operation routes of the local Neon API, and the admin routes
under `/_local/` (faults, server info)."""

from __future__ import annotations

import os
import zlib
from datetime import UTC, datetime
from typing import Any

from cathouse_harness.local.api import api_validation as check
from cathouse_harness.local.api.api_http import (
    Handler,
    api,
    json_body,
    log,
    neon_of,
    ok,
    project_of,
    with_operations,
)
from cathouse_harness.local.api.api_shapes import (
    api_key_json,
    branch_json,
    operation_json,
    operations_json,
    project_item_json,
    project_json,
    regions_json,
    snapshot_json,
    user_json,
)
from cathouse_harness.local.api.journal import RequestJournal
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.history import HISTORY_RETENTION_SECONDS
from cathouse_harness.local.control.operations import failure_reason
from cathouse_harness.local.control.state import OperationRecord, iso, now
from cathouse_harness.local.discovery import API_KEY_FILE
from cathouse_harness.local.sim import neon_features
from cathouse_harness.local.sim.faults import FaultInjector, faults_from_json
from starlette.requests import Request
from starlette.responses import Response

# How long a GET of a running operation may wait for it to finish before answering
# (it then says `running`, as Neon does, and the client polls again).
OPERATION_LONG_POLL = 0.1
MAX_PROJECTS = 400
MAX_OPERATIONS = 1000


@api
async def get_auth(request: Request) -> Response:
    return ok({"account_id": "local", "auth_method": "api_key_user"})


@api
async def get_me(request: Request) -> Response:
    return ok(user_json(neon_of(request)))


@api
async def get_organizations(request: Request) -> Response:
    # A personal account: its projects belong to no organization.
    return ok({"organizations": []})


@api
async def get_regions(request: Request) -> Response:
    return ok(regions_json())


@api
async def list_projects(request: Request) -> Response:
    """The one project, paged as Neon pages projects (`limit` 1-400, default 10)."""
    neon = neon_of(request)
    query = request.query_params
    check.limit(query, MAX_PROJECTS, 10)
    cursor = query.get("cursor")
    done = cursor is not None and check.decode_cursor(cursor).get("after") == neon.state.project_id
    projects = [] if done else [project_item_json(neon)]
    body: dict[str, Any] = {"projects": projects, "applications": {}, "integrations": {}}
    if projects:
        body["pagination"] = {"cursor": check.encode_cursor({"after": neon.state.project_id})}
    return ok(body)


@api
async def list_shared_projects(request: Request) -> Response:
    """Projects other accounts shared with this one: none, locally (the query is still
    checked as Neon checks it)."""
    check.limit(request.query_params, MAX_PROJECTS, 10)
    cursor = request.query_params.get("cursor")
    if cursor:
        check.decode_cursor(cursor)
    return ok({"projects": []})


@api
async def get_project(request: Request) -> Response:
    return ok({"project": project_json(project_of(request))})


@api
async def update_project(request: Request) -> Response:
    """A new name, and `settings.preload_libraries` (`preload`); the other fields Neon
    takes are checked by `api_validation.project_update`. Like Neon, the answer is the
    project and the operations the change started."""
    neon = project_of(request)
    body = await json_body(request)
    name = check.project_update(body, HISTORY_RETENTION_SECONDS)
    preload = check.preload_libraries(body)
    ops = await preload_change(neon, preload) if preload is not None else []
    if name is not None and name != neon.state.project_name:
        neon.state.project_name = name
    if ops or name is not None:
        neon.state.project_updated_at = iso(now())
        neon.save()
    return ok({"project": project_json(neon), "operations": operations_json(neon, ops)})


async def preload_change(neon: LocalNeon, kept: dict[str, Any]) -> list[OperationRecord]:
    """Keep `settings.preload_libraries` and apply it to every branch's instance in an
    operation per endpoint (Neon's `apply_config`), refusing a library the local list
    (`available_preload_libraries`) lacks in one line."""
    here = await neon.dataplane.preload_libraries_here()  # type: ignore[attr-defined]
    postgres = neon.dataplane.install.describe()  # type: ignore[attr-defined]
    for name in kept["enabled_libraries"]:
        refusal = neon_features.preload_refusal(name, here, postgres)
        if refusal is not None:
            raise check.bad_request(refusal)
    enabled = neon_features.preload_names(kept, here)
    neon.ops.check_unlocked()
    neon.state.preload_libraries = kept
    ops = [neon.ops.new("apply_config", ep.branch_id, ep.id) for ep in neon.live_endpoints()]
    fail = neon.faults.operation_fails()

    async def apply() -> None:
        try:
            for op in ops:
                neon.ops.begin(op)
            await neon.ops.preamble(fail, [op.action for op in ops])
            await neon.dataplane.set_preload_libraries(enabled)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("applying preload libraries failed: %s", exc.__class__.__name__)
            neon.ops.fail_all(ops, failure_reason(exc, "apply_config"))
        else:
            for op in ops:
                neon.ops.end(op, "finished")
        neon.save()

    neon.ops.spawn(apply, "apply preload libraries")
    return ops


@api
async def list_permissions(request: Request) -> Response:
    """Who else may use the project: nobody; a local project is its developer's alone."""
    project_of(request)
    return ok({"project_permissions": []})


def _always_empty(key: str) -> Handler:
    """A route answering `{key: []}` for the project: a list a new Neon project has
    nothing in, and a local one never gets anything in (no route here adds to it)."""

    @api
    async def empty(request: Request) -> Response:
        project_of(request)
        return ok({key: []})

    return empty


# JWKS URLs (Neon RLS): adding one is not emulated.
list_jwks = _always_empty("jwks")
# VPC endpoint restrictions: a local project is reached on loopback only.
list_vpc_endpoints = _always_empty("endpoints")


@api
async def list_available_preload_libraries(request: Request) -> Response:
    """Neon's shared preload libraries that the local PostgreSQL has (none on a plane
    that cannot preload): what `settings.preload_libraries` may enable here."""
    neon = project_of(request)
    here_of = getattr(neon.dataplane, "preload_libraries_here", None)
    here = await here_of() if here_of is not None else {}
    return ok({"libraries": [
        {"library_name": lib.name, "description": lib.description, "is_default": lib.default,
         "is_experimental": False, "version": here[lib.name]}
        for lib in neon_features.NEON_PRELOAD_LIBRARIES if lib.name in here
    ]})


@api
async def list_snapshots(request: Request) -> Response:
    """The project's snapshots, newest first (`cathouse_harness.local.snapshots`)."""
    neon = project_of(request)
    return ok({"snapshots": [snapshot_json(s) for s in neon.snapshots.listed()]})


@api
async def update_snapshot(request: Request) -> Response:
    neon = project_of(request)
    changes = check.snapshot_update(await json_body(request))
    return ok({"snapshot": snapshot_json(neon.snapshots.update(request.path_params["snapshot_id"], changes))})


@api
async def delete_snapshot(request: Request) -> Response:
    """Neon answers 202 with the operations removing it."""
    neon = project_of(request)
    ops = neon.snapshots.delete(request.path_params["snapshot_id"])
    return ok({"operations": operations_json(neon, ops)}, 202)


@api
async def restore_snapshot(request: Request) -> Response:
    """A new branch with the snapshot's data (answered while it is made, `init`), made
    to replace its target at once when `finalize_restore` is true."""
    neon = project_of(request)
    spec = check.snapshot_restore(await json_body(request), request.query_params)
    branch, ops = neon.snapshots.restore(
        request.path_params["snapshot_id"], name=spec.name, target_branch_id=spec.target_branch_id,
        finalize=spec.finalize,
    )
    return with_operations(neon, "branch", branch_json(neon, branch), ops)


@api
async def list_api_keys(request: Request) -> Response:
    """The home's one key, by its id, name and dates; never the key. This request used
    it, from the caller's (loopback) address."""
    neon = neon_of(request)
    try:
        made = os.stat(neon.home / API_KEY_FILE).st_mtime
    except OSError:  # the server holds the key in memory; its file was moved away
        made = datetime.fromisoformat(neon.state.created_at).timestamp()
    created = datetime.fromtimestamp(int(made), UTC)
    key_id = zlib.crc32(created.isoformat().encode()) & 0x7FFFFFFF
    client = request.client.host if request.client else "127.0.0.1"
    return ok([api_key_json(key_id, iso(created), iso(now()), client)])


@api
async def list_operations(request: Request) -> Response:
    """Newest first; with `limit` (1-1000) a page, and `pagination.cursor` for the next."""
    neon = project_of(request)
    query = request.query_params
    cursor = query.get("cursor")
    position = check.decode_cursor(cursor) if cursor else {}
    limit = check.limit(query, MAX_OPERATIONS, position.get("limit"))
    ops = list(neon.state.operations.values())
    ops.reverse()  # the operations are kept in creation order
    if cursor:
        after = position.get("after")
        ids = [op.id for op in ops]
        if after not in ids:
            raise check.bad_request("cursor is not one this server gave, or too old")
        ops = ops[ids.index(after) + 1 :]
    if limit is not None:
        ops = ops[:limit]
    body: dict[str, Any] = {"operations": [operation_json(neon, op) for op in ops]}
    if ops:
        body["pagination"] = {"cursor": check.encode_cursor({"after": ops[-1].id, "limit": limit})}
    return ok(body)


@api
async def get_operation(request: Request) -> Response:
    neon = project_of(request)
    op = neon.ops.get(request.path_params["operation_id"])
    # A short, bounded wait for a running operation to finish: the poll that would have
    # found it finished a few milliseconds later is answered as it finishes.
    await neon.ops.wait_settled(op, OPERATION_LONG_POLL)
    return ok({"operation": operation_json(neon, op)})


@api
async def get_faults(request: Request) -> Response:
    injector: FaultInjector = request.app.state.faults
    return ok({"faults": injector.config.as_json(), "injected": injector.injected})


@api
async def put_faults(request: Request) -> Response:
    injector: FaultInjector = request.app.state.faults
    body = await json_body(request)
    try:
        config = faults_from_json(body)
    except Exception as exc:  # ConfigError: a one-line message without secrets
        raise check.bad_request(str(exc)) from None
    injector.configure(config)
    log.info("faults set to %r", config.to_spec() or "none")
    return ok({"faults": config.as_json(), "injected": 0})


@api
async def get_requests(request: Request) -> Response:
    """The journal's requests received at or after `since` (time.time(), default 0)."""
    journal: RequestJournal = request.app.state.journal
    try:
        since = float(request.query_params.get("since", "0"))
    except ValueError:
        raise check.bad_request("since must be a number (seconds since the epoch)") from None
    return ok({"requests": [e.as_json() for e in journal.since(since)]})


@api
async def get_info(request: Request) -> Response:
    neon = neon_of(request)
    features = getattr(neon.dataplane, "features", None)
    install = getattr(neon.dataplane, "install", None)
    pooler_info = getattr(neon.dataplane, "pooler_info", None)
    return ok(
        {
            "project_id": neon.state.project_id,
            # what a client's configured database and role must be among (neon.backend)
            "databases": list(neon.state.default_branch.databases),
            "roles": list(neon.state.default_branch.roles),
            "pid": os.getpid(),
            "home": str(neon.home),
            "storage": neon.storage,
            "pgbouncer": bool(getattr(neon.dataplane, "pgbouncer_available", False)),
            # the pooled endpoints' PgBouncer: its mode, version and prepared statements
            "pooler": pooler_info() if pooler_info is not None else None,
            "server_version": str(getattr(neon.dataplane, "server_version", "") or ""),
            # why a URL built from an endpoint's `host` alone does not connect here, if not
            "host_problem": getattr(neon.dataplane, "host_problem", None),
            # why endpoints are addresses, not <id>.local.localhost names, if they are
            "names_problem": getattr(neon.dataplane, "names_problem", None),
            # which PostgreSQL runs the cluster, and what it has of Neon's (doctor's list)
            "postgres_bin": str(install.original / "bin") if install is not None else None,
            "postgres_origin": install.origin if install is not None else None,
            "features": features.as_info() if features is not None else None,
        }
    )
