"""Branch routes of the local Neon API: list (paged), count, create, get, update,
delete, restore, set as default, schema and schema comparison."""

from __future__ import annotations

from typing import Any

from cathouse_harness.errors import ApiError
from cathouse_harness.local.api import api_validation as check
from cathouse_harness.local.api.api_http import api, gone, json_body, ok, project_of, with_operations
from cathouse_harness.local.api.api_shapes import (
    annotation_json,
    branch_json,
    created_branch_json,
    operations_json,
    snapshot_json,
)
from cathouse_harness.local.api.schema import branch_schema, compare_schema
from cathouse_harness.local.control.control import LocalNeon
from cathouse_harness.local.control.state import BranchRecord, OperationRecord
from starlette.requests import Request
from starlette.responses import Response

MAX_LIMIT = 10000


def _matching(neon: LocalNeon, search: str | None) -> list[BranchRecord]:
    branches = neon.live_branches()
    if search:
        needle = search.lower()
        branches = [b for b in branches if needle in b.name.lower() or needle in b.id.lower()]
    return branches


@api
async def list_branches(request: Request) -> Response:
    """Sorted by `sort_by` (`updated_at`) in `sort_order` (`desc`); with `limit`, a page
    and `pagination.next`, a cursor that carries the order and where the page ended."""
    neon = project_of(request)
    query = request.query_params
    cursor = query.get("cursor")
    position: dict[str, Any] = check.decode_cursor(cursor) if cursor else {}
    if position:
        sort_by, order, search = position.get("sort_by"), position.get("sort_order"), position.get("search")
        if sort_by not in check.BRANCH_SORT_KEYS or order not in check.SORT_ORDERS:
            raise check.bad_request("cursor is not one this server gave")
    else:
        sort_by = check.choice(query, "sort_by", check.BRANCH_SORT_KEYS, "updated_at")
        order = check.choice(query, "sort_order", check.SORT_ORDERS, "desc")
        search = query.get("search")
    limit = check.limit(query, MAX_LIMIT, position.get("limit"))
    descending = order == "desc"

    def key(b: BranchRecord) -> list[str]:
        return [getattr(b, sort_by), b.id]

    branches = sorted(_matching(neon, search), key=key, reverse=descending)
    after = position.get("after")
    if isinstance(after, list):
        branches = [b for b in branches if (key(b) < after if descending else key(b) > after)]
    pagination: dict[str, Any] = {"sort_by": sort_by, "sort_order": order}
    if limit is not None and len(branches) > limit:
        branches = branches[:limit]
        pagination["next"] = check.encode_cursor(
            {
                "sort_by": sort_by,
                "sort_order": order,
                "search": search,
                "limit": limit,
                "after": key(branches[-1]),
            }
        )
    annotations = {b.id: annotation_json(b) for b in branches if b.annotation is not None}
    return ok(
        {
            "branches": [branch_json(neon, b) for b in branches],
            "annotations": annotations,
            "pagination": pagination,
        }
    )


@api
async def count_branches(request: Request) -> Response:
    neon = project_of(request)
    return ok({"count": len(_matching(neon, request.query_params.get("search")))})


@api
async def create_branch(request: Request) -> Response:
    neon = project_of(request)
    spec = check.branch_create(await json_body(request))
    current = await neon.history.sample(spec.parent_id) if spec.at and spec.at.lsn else None
    branch, eps, ops = await neon.branching.create(spec, current)
    return ok(created_branch_json(neon, branch, eps, ops), 201)


@api
async def get_branch(request: Request) -> Response:
    neon = project_of(request)
    branch = neon.branch(request.path_params["branch_id"])
    return ok({"branch": branch_json(neon, branch), "annotation": annotation_json(branch)})


@api
async def get_masking_rules(request: Request) -> Response:
    """Masking rules (anonymized branches): none, as for any branch Neon did not
    anonymize; making an anonymized branch is not emulated."""
    neon = project_of(request)
    neon.branch(request.path_params["branch_id"])  # an unknown branch is Neon's 404
    return ok({"masking_rules": []})


@api
async def get_backup_schedule(request: Request) -> Response:
    """The branch's snapshot schedule: empty, the truth here, since the local server
    takes no snapshots on a schedule (setting one is not emulated)."""
    neon = project_of(request)
    neon.branch(request.path_params["branch_id"])
    return ok({"schedule": []})


def _branch_operations(neon: LocalNeon, branch: BranchRecord, ops: list[OperationRecord]) -> Response:
    return with_operations(neon, "branch", branch_json(neon, branch), ops)


@api
async def update_branch(request: Request) -> Response:
    neon = project_of(request)
    spec = check.branch_update(await json_body(request))
    return _branch_operations(neon, neon.branching.update(request.path_params["branch_id"], spec), [])


@api
async def delete_branch(request: Request) -> Response:
    neon = project_of(request)
    deleted = neon.branching.delete(request.path_params["branch_id"])
    return gone() if deleted is None else _branch_operations(neon, *deleted)


@api
async def restore_branch(request: Request) -> Response:
    neon = project_of(request)
    spec = check.restore(await json_body(request))
    current = await neon.history.sample(spec.source_branch_id) if spec.at and spec.at.lsn else None
    return _branch_operations(neon, *neon.branching.restore(request.path_params["branch_id"], spec, current))


@api
async def create_snapshot(request: Request) -> Response:
    """A snapshot of the branch now or at `lsn` / `timestamp` (query parameters, as the
    reference has them), with `name` and `expires_at`."""
    neon = project_of(request)
    query = request.query_params
    at = check.point_in_time(query, "lsn", "timestamp")
    current = await neon.history.sample(request.path_params["branch_id"]) if at and at.lsn else None
    snapshot, ops = neon.snapshots.create(
        request.path_params["branch_id"], name=query.get("name"), at=at, expires_at=query.get("expires_at"),
        current_lsn=current,
    )
    return ok({"snapshot": snapshot_json(snapshot), "operations": operations_json(neon, ops)})


@api
async def finalize_restore(request: Request) -> Response:
    neon = project_of(request)
    name = check.finalize_name(await json_body(request))
    ops = neon.snapshots.finalize(request.path_params["branch_id"], name)
    return ok({"operations": operations_json(neon, ops)})


@api
async def set_default_branch(request: Request) -> Response:
    neon = project_of(request)
    return _branch_operations(neon, neon.branching.set_default(request.path_params["branch_id"]), [])


def _db_name(request: Request) -> str:
    name = request.query_params.get("db_name")
    if not name:
        raise check.bad_request("db_name is required")
    return name


async def _as_of(request: Request, neon: LocalNeon, branch_id: str, lsn_key: str, time_key: str) -> str:
    """The branch whose current state is `branch_id`'s at the point the query names
    (itself when it names none), as the local history has it."""
    point = check.point_in_time(request.query_params, lsn_key, time_key)
    if point is None:
        return branch_id
    current = await neon.history.sample(branch_id) if point.lsn else None
    located = neon.history.locate(neon.branch(branch_id), point, current)
    if located.replay:  # no branch holds it: only a replay of the WAL would
        raise ApiError(400, "BAD_REQUEST", f"the schema of branch {branch_id} at a point it no longer "
                       "holds is not served locally: branch from that point, then ask that branch")
    return str(located.source.id)


@api
async def get_schema(request: Request) -> Response:
    neon = project_of(request)
    db_name = _db_name(request)
    form = check.choice(request.query_params, "format", ("sql", "json"), "sql")
    branch_id = await _as_of(request, neon, request.path_params["branch_id"], "lsn", "timestamp")
    return ok(await branch_schema(neon, branch_id, db_name, form))


@api
async def get_schema_comparison(request: Request) -> Response:
    neon = project_of(request)
    db_name = _db_name(request)
    branch_id = request.path_params["branch_id"]
    base = request.query_params.get("base_branch_id") or neon.branch(branch_id).parent_id
    if base is not None:
        base = await _as_of(request, neon, base, "base_lsn", "base_timestamp")
    branch_id = await _as_of(request, neon, branch_id, "lsn", "timestamp")
    return ok(await compare_schema(neon, branch_id, base, db_name))
