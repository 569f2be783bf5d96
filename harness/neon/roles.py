"""A branch's roles and databases, and Neon's connection URIs for them."""

from __future__ import annotations

from collections.abc import Mapping

from cathouse_harness.errors import NeonAPIError
from cathouse_harness.neon.base import ClientBase, items, q
from cathouse_harness.neon.models import Database, Role, secret_uri
from cathouse_harness.support.redact import Secret


class RolesMixin(ClientBase):
    async def list_databases(self, project_id: str, branch_id: str) -> list[Database]:
        data = await self._transport.get(f"/projects/{q(project_id)}/branches/{q(branch_id)}/databases")
        return [Database.from_api(d) for d in items(data, "databases")]

    async def list_roles(self, project_id: str, branch_id: str) -> list[Role]:
        data = await self._transport.get(f"/projects/{q(project_id)}/branches/{q(branch_id)}/roles")
        return [Role.from_api(r) for r in items(data, "roles")]

    async def reveal_password(self, project_id: str, branch_id: str, role: str) -> Secret:
        data = await self._transport.get(
            f"/projects/{q(project_id)}/branches/{q(branch_id)}/roles/{q(role)}/reveal_password"
        )
        password = data.get("password") if isinstance(data, Mapping) else None
        if not password:
            raise NeonAPIError(
                f"no password in the answer for role {role!r} on branch {branch_id}",
                status=200,
                method="GET",
                path=f"/projects/{project_id}/branches/{branch_id}/roles",
            )
        return Secret(str(password))

    async def connection_uri(
        self,
        project_id: str,
        *,
        branch_id: str,
        database_name: str,
        role_name: str,
        endpoint_id: str | None = None,
        pooled: bool = False,
    ) -> Secret:
        """Neon's connection URI (with the password) for a role and database."""
        params = {
            "branch_id": branch_id,
            "database_name": database_name,
            "role_name": role_name,
            "pooled": "true" if pooled else "false",
        }
        if endpoint_id:
            params["endpoint_id"] = endpoint_id
        data = await self._transport.get(f"/projects/{q(project_id)}/connection_uri", params=params)
        uri = data.get("uri") if isinstance(data, Mapping) else None
        if not uri:
            raise NeonAPIError(
                "no uri in the answer",
                status=200,
                method="GET",
                path=f"/projects/{project_id}/connection_uri",
            )
        return secret_uri(str(uri))

    async def connection_uris(
        self, project_id: str, *, branch_id: str, database_name: str, role_name: str,
        endpoint_id: str | None = None,
    ) -> tuple[Secret, Secret]:
        """The direct and the pooled connection URI, in that order."""
        direct = await self.connection_uri(
            project_id, branch_id=branch_id, database_name=database_name, role_name=role_name,
            endpoint_id=endpoint_id,
        )
        pooled = await self.connection_uri(
            project_id, branch_id=branch_id, database_name=database_name, role_name=role_name,
            endpoint_id=endpoint_id, pooled=True,
        )
        return direct, pooled
