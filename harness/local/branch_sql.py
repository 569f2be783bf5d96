"""CREATE / DROP DATABASE over SQL, on the branch of the connection that sends them.

On Neon a client of a branch's compute can make and drop databases as on any
PostgreSQL; the new database belongs to that branch (the API lists it, forks carry it)
and is reached through the same endpoint. Here the endpoint proxy hands such a statement
to the `SqlConnection` the catalog's gate gave the connection, which decides it as
PostgreSQL would (same SQLSTATEs and messages, logical names only) and makes the change
in the catalog and on the cluster. Not an API operation: no project lock, no
apply_config ending the branch's connections.

Who is "connected to a database" is counted here: the proxy's client connections, on
every endpoint and listener of the branch (pooled ones included: a client holding a
pooled connection is using the database, as PostgreSQL counts PgBouncer's server
connection on Neon), the issuing one left out.

A copy of the database the issuing connection is on (the harness's case: one worker's
database from the session's, sent over a connection to it) cannot come from the
server's own superuser connection, for PostgreSQL refuses to copy a database another
session is on; it runs on the issuing connection's own upstream session (`borrow`), as
on Neon, which is why branch roles have CREATEDB, as Neon's roles do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cathouse_harness.db.quoting import quote_ident
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.neon_features import extension_refusal, icu_refusal
from cathouse_harness.local.sql_databases import CreateDatabase, DropDatabase, FeatureUse, SqlRefusal
from cathouse_harness.local.sql_relay import Borrow
from cathouse_harness.local.state import BranchRecord, DatabaseRecord, database_id, iso, now
from cathouse_harness.support.log import get_logger

if TYPE_CHECKING:
    from cathouse_harness.local.core import NeonCore

log = get_logger("local.branch_sql")

# template0 and template1 hold nothing of a branch's: a copy of them is an empty database
_EMPTY_TEMPLATES = frozenset({"template0", "template1"})


def _in_use(what: str, others: int) -> SqlRefusal:
    detail = (
        "There is 1 other session using the database."
        if others == 1
        else f"There are {others} other sessions using the database."
    )
    return SqlRefusal("55006", f"{what} is being accessed by other users", detail)


class SqlConnection:
    """One admitted proxy connection: the branch, role and database it is on."""

    def __init__(
        self, owner: BranchSql, endpoint_id: str, branch_id: str, user: str, physical: str,
        *, read_only: bool = False,
    ) -> None:
        self.owner = owner
        # a read-only endpoint's, or a time-travel connection's (a past state, never written)
        self.read_only = read_only
        self.endpoint_id = endpoint_id
        self.branch_id = branch_id
        self.user = user
        self.physical = physical
        self.end: Callable[[], None] = lambda: None

    def attach(self, end: Callable[[], None]) -> None:
        self.end = end
        self.owner.connected.setdefault(self.physical, set()).add(self)

    def detach(self) -> None:
        sessions = self.owner.connected.get(self.physical)
        if sessions is not None:
            sessions.discard(self)
            if not sessions:
                del self.owner.connected[self.physical]

    async def perform(self, statement: CreateDatabase | DropDatabase, borrow: Borrow) -> None:
        branch = self.owner.branch_for(self, statement.tag)
        if isinstance(statement, CreateDatabase):
            await self.owner.create(self, branch, statement, borrow)
        else:
            await self.owner.drop(self, branch, statement)


    def feature_refusal(self, use: FeatureUse) -> str | None:
        """Why extensions or an ICU collation this connection asks for cannot be had
        here (`cathouse_harness.local.neon_features`), or None."""
        features = getattr(self.owner.neon.dataplane, "features", None)
        for name in use.extensions:
            why = extension_refusal(name, features)
            if why is not None:
                return why
        return icu_refusal(features) if use.icu else None


class BranchSql:
    """The connections on each database, and the statements' effects."""

    def __init__(self, neon: NeonCore) -> None:
        self.neon = neon
        # physical database -> the proxy connections on it
        self.connected: dict[str, set[SqlConnection]] = {}
        # (branch, name) of databases being created, so two CREATEs make one
        self._creating: set[tuple[str, str]] = set()

    def connection(
        self, endpoint_id: str, branch_id: str, user: str, physical: str, *, read_only: bool = False
    ) -> SqlConnection:
        return SqlConnection(self, endpoint_id, branch_id, user, physical, read_only=read_only)

    def others(self, physical: str | None, me: SqlConnection) -> list[SqlConnection]:
        if physical is None:
            return []
        return [c for c in self.connected.get(physical, ()) if c is not me]

    def branch_for(self, me: SqlConnection, tag: str) -> BranchRecord:
        state = self.neon.state
        ep = state.endpoints.get(me.endpoint_id)
        branch = state.branches.get(me.branch_id)
        if ep is None or branch is None or branch.deleting:
            raise SqlRefusal("08006", f"endpoint {me.endpoint_id} does not exist any more")
        if ep.type == "read_only" or me.read_only:
            raise SqlRefusal("25006", f"cannot execute {tag} in a read-only transaction")
        return branch

    # ------------------------------------------------------------------ CREATE

    async def create(
        self, me: SqlConnection, branch: BranchRecord, statement: CreateDatabase, borrow: Borrow
    ) -> None:
        name = statement.name
        key = (branch.id, name)
        if name in branch.databases or key in self._creating:
            raise SqlRefusal("42P04", f'database "{name}" already exists')
        owner = statement.owner or me.user
        if owner not in branch.roles:
            raise SqlRefusal("42704", f'role "{owner}" does not exist')
        template = self._template(me, branch, statement.template)
        self._creating.add(key)
        try:
            physical = self.neon.catalog.new_physical()
            await self._make(me, physical, owner, template, borrow)
            stamp = iso(now())
            branch.databases[name] = DatabaseRecord(
                database_id(branch.id, name), name, owner, stamp, stamp, physical
            )
            self.neon.save()
        finally:
            self._creating.discard(key)
        log.info("database %s created over SQL on branch %s", name, branch.id)

    def _template(self, me: SqlConnection, branch: BranchRecord, name: str | None) -> DatabaseRecord | None:
        """The branch database to copy (None: an empty database), checked as
        PostgreSQL checks a template."""
        if name is None or name in _EMPTY_TEMPLATES:
            return None
        template = branch.databases.get(name)
        if template is None:
            raise SqlRefusal("3D000", f'template database "{name}" does not exist')
        if template.owner_name != me.user:
            raise SqlRefusal("42501", f'permission denied to copy database "{name}"')
        others = self.others(template.physical, me)
        if others:
            raise _in_use(f'source database "{name}"', len(others))
        return template

    async def _make(
        self, me: SqlConnection, physical: str, owner: str, template: DatabaseRecord | None, borrow: Borrow
    ) -> None:
        dataplane = self.neon.dataplane
        source = template.physical if template is not None else None
        try:
            if template is None or source is None:
                await dataplane.create_database(physical, owner=owner)
            elif source != me.physical:
                await dataplane.create_database(physical, owner=owner, template=source)
            else:
                await self._copy_own(me, physical, template, borrow)
                if owner != me.user:
                    await dataplane.set_database_owner(physical, owner)
        except LocalServerError as exc:
            log.warning("CREATE DATABASE over SQL failed: %s", exc)
            raise SqlRefusal("58000", "the local server could not make the database; see its log") from None

    async def _copy_own(
        self, me: SqlConnection, physical: str, template: DatabaseRecord, borrow: Borrow
    ) -> None:
        """Copy the database `me` is on, from `me`'s own upstream session."""
        source = me.physical
        pid = (await borrow("SELECT pg_backend_pid()"))[0][0]
        dataplane = self.neon.dataplane
        # Nobody is on it through an endpoint (checked); what is left is PgBouncer's
        # idle server connections, which PostgreSQL would count.
        await dataplane.end_sessions(source, keep=int(pid or 0))
        sql = (
            f"CREATE DATABASE {quote_ident(physical)} TEMPLATE {quote_ident(source)}"
            f" OWNER {quote_ident(me.user)} STRATEGY FILE_COPY"
        )
        try:
            await borrow(sql)
        except SqlRefusal as refusal:
            if refusal.sqlstate == "55006":  # a session came in over PostgreSQL's own port
                raise _in_use(f'source database "{template.name}"', 1) from None
            log.warning("copying database %s failed: %s %s", source, refusal.sqlstate, refusal.message)
            raise SqlRefusal(
                refusal.sqlstate, "the local server could not copy the database; see its log"
            ) from None
        await dataplane.database_added(physical)

    # ------------------------------------------------------------------ DROP

    async def drop(self, me: SqlConnection, branch: BranchRecord, statement: DropDatabase) -> None:
        name = statement.name
        db = branch.databases.get(name)
        if db is None:
            if statement.if_exists:
                return
            raise SqlRefusal("3D000", f'database "{name}" does not exist')
        if db.physical is not None and db.physical == me.physical:
            raise SqlRefusal("55006", "cannot drop the currently open database")
        if db.owner_name != me.user:
            raise SqlRefusal("42501", f"must be owner of database {name}")
        others = self.others(db.physical, me)
        if others and not statement.force:
            raise _in_use(f'database "{name}"', len(others))
        for other in others:
            other.end()
        del branch.databases[name]
        self.neon.save()
        if db.physical is not None:
            try:
                await self.neon.dataplane.drop_database(db.physical)
            except LocalServerError as exc:  # gone from the branch all the same, as on Neon
                log.warning("dropping database %s over SQL left it behind: %s", name, exc)
        log.info("database %s dropped over SQL on branch %s", name, branch.id)
