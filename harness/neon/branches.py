"""Neon's branches: reading, finding by name, renaming, deleting and restoring.

Creating one is `create.py`'s (the one request that is not idempotent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.base import items, obj, q
from cathouse_harness.neon.models import Branch, Operation
from cathouse_harness.neon.operations import OperationsMixin
from cathouse_harness.neon.transport import Progress
from cathouse_harness.support.timestamps import format_time


class _Unset:
    """Marks "argument not given" where None is a meaningful value."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def newest(branches: list[Branch]) -> Branch | None:
    if not branches:
        return None
    floor = datetime.min.replace(tzinfo=UTC)
    return max(branches, key=lambda b: b.created_at or floor)


class BranchesMixin(OperationsMixin):
    async def list_branches(self, project_id: str, *, search: str | None = None) -> list[Branch]:
        """Branches with their annotations (Neon sends those beside the list, by id)."""
        return await self._list_branches(project_id, search=search)

    async def _list_branches(
        self, project_id: str, *, search: str | None = None, deadline_at: float | None = None
    ) -> list[Branch]:
        params = {"search": search} if search else None
        data = await self._transport.get(
            f"/projects/{q(project_id)}/branches", params=params, deadline_at=deadline_at
        )
        annotations = obj(data, "annotations")
        return [
            Branch.from_api(b, annotations.get(str(b.get("id")))) for b in items(data, "branches")
        ]

    async def get_branch(self, project_id: str, branch_id: str) -> Branch:
        data = await self._transport.get(f"/projects/{q(project_id)}/branches/{q(branch_id)}")
        return Branch.from_api(obj(data, "branch"), obj(data, "annotation"))

    async def find_branch(self, project_id: str, name: str) -> Branch | None:
        """The branch called exactly `name` (the newest if Neon holds several), or None."""
        matches = [b for b in await self.list_branches(project_id, search=name) if b.name == name]
        return newest(matches)

    async def resolve_branch(self, project_id: str, name_or_id: str) -> Branch:
        """A branch by id (`br-…`) or exact name; NeonAPIError with status 404 if none."""
        if name_or_id.startswith("br-"):
            path = f"/projects/{q(project_id)}/branches/{q(name_or_id)}"
            answer = await self._transport.call("GET", path, accept=frozenset({404}))
            if answer.data is not None:
                return Branch.from_api(obj(answer.data, "branch"), obj(answer.data, "annotation"))
        found = await self.find_branch(project_id, name_or_id)
        if found is None:
            raise NeonAPIError(
                f"no branch with id or name {name_or_id!r} in project {project_id}",
                status=404,
                code="NOT_FOUND",
                method="GET",
                path=f"/projects/{project_id}/branches",
            )
        return found

    async def update_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        expires_at: datetime | None | _Unset = UNSET,
    ) -> Branch:
        """Rename and/or change `expires_at`; `expires_at=None` removes the expiry."""
        patch: dict[str, Any] = {}
        if name is not None:
            patch["name"] = name
        if not isinstance(expires_at, _Unset):
            patch["expires_at"] = None if expires_at is None else format_time(expires_at)
        if not patch:
            return await self.get_branch(project_id, branch_id)
        answer = await self._transport.call(
            "PATCH",
            f"/projects/{q(project_id)}/branches/{q(branch_id)}",
            body={"branch": patch},
        )
        return Branch.from_api(obj(answer.data, "branch"), obj(answer.data, "annotation"))

    async def delete_branch(
        self, project_id: str, branch_id: str, *, wait: bool = True, missing_ok: bool = True
    ) -> bool:
        """Delete a branch. True if this call deleted it, False if it was already gone.

        Neon answers 204 for a branch that does not exist (or no longer does); a 404 is
        taken the same way. Either, after an earlier attempt that may have reached Neon,
        counts as our delete.
        """
        path = f"/projects/{q(project_id)}/branches/{q(branch_id)}"
        progress = Progress(self._clock)
        answer = await self._transport.call("DELETE", path, accept=frozenset({404}), progress=progress)
        if answer.status in (204, 404):
            if not missing_ok:
                raise NeonAPIError(
                    f"branch {branch_id} not found in project {project_id}",
                    status=404,
                    code="NOT_FOUND",
                    method="DELETE",
                    path=path,
                )
            return progress.may_have_acted
        if wait:
            await self.wait_for_operations(
                project_id, [Operation.from_api(o) for o in items(answer.data, "operations")]
            )
        return True

    async def restore_branch(
        self, project_id: str, branch_id: str, *, source_branch_id: str, wait: bool = True
    ) -> Branch:
        """Reset `branch_id` to the current state of `source_branch_id` (usually its parent).

        Retried like the idempotent requests: restoring twice to the same source ends in
        the same state.
        """
        answer = await self._transport.call(
            "POST",
            f"/projects/{q(project_id)}/branches/{q(branch_id)}/restore",
            body={"source_branch_id": source_branch_id},
        )
        if not wait:
            return Branch.from_api(obj(answer.data, "branch"), obj(answer.data, "annotation"))
        await self.wait_for_operations(
            project_id, [Operation.from_api(o) for o in items(answer.data, "operations")]
        )
        return await self.get_branch(project_id, branch_id)

    async def compare_schema(
        self,
        project_id: str,
        branch_id: str,
        *,
        db_name: str,
        base_branch_id: str | None = None,
        base_timestamp: datetime | None = None,
    ) -> str:
        """The unified diff of `base_branch_id`'s schema dump (default: the branch's
        parent; `base_timestamp`: as it was then) against `branch_id`'s, for one database;
        "" when they are the same. A read: retried like the other GETs."""
        params = {"db_name": db_name}
        if base_branch_id:
            params["base_branch_id"] = base_branch_id
        if base_timestamp is not None:
            params["base_timestamp"] = format_time(base_timestamp)
        data = await self._transport.get(
            f"/projects/{q(project_id)}/branches/{q(branch_id)}/compare_schema", params=params
        )
        diff = data.get("diff") if isinstance(data, dict) else None
        return diff if isinstance(diff, str) else ""
