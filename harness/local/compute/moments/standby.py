"""Read-only copies of an instance, and a schema-only one.

A read-only copy is a hot standby (`fork(…, read_only=True)`): PostgreSQL itself refuses
every write there, whatever a session sets, as on a Neon read replica. It follows
nobody: it holds its parent as of the copy (a WAL sender on the parent would let it
follow; none runs, see ARCHITECTURE.md "Compute per branch").

A time-travel connection may be served from another branch's instance (a child that
still holds the state asked for), whose roles may have other passwords than the
branch the client logged in to: the relay logs in upstream with the client's own SCRAM
proof, so the copy must carry the verifiers of the client's branch. A standby cannot be
written, so such a copy starts read-write first (its socket is ours alone until the
relay is told of it), takes the verifiers, stops, and starts again as a standby.

A schema-only copy keeps every object and drops every row: a fork, then each database
emptied as `pg_dump --schema-only` into a fresh instance would leave it (tables and
large objects empty, sequences restarted, materialized views unpopulated; the rows of
extensions' own tables stay, as CREATE EXTENSION would make them again).
"""

from __future__ import annotations

from collections.abc import Mapping

from cathouse_harness.local.compute.fork import fork
from cathouse_harness.local.compute.instance import Instance, admin_session, remove, start, stop
from cathouse_harness.local.compute.layout import ComputeHome
from cathouse_harness.support.safe_paths import write_private
from psycopg import sql

# the SCRAM verifiers of the roles a relayed client may log in as (the relay's rule:
# never a superuser's)
_VERIFIERS_SQL = """
SELECT rolname, rolpassword FROM pg_authid
 WHERE rolcanlogin AND NOT rolsuper AND rolpassword LIKE 'SCRAM-SHA-256$%'
"""

# One statement per database, run by the superuser with triggers off (an ON TRUNCATE
# trigger of the parent's must not run in the copy). Objects of extensions keep
# their rows: CREATE EXTENSION would fill them again in an empty database.
_EMPTY_DATABASE = r"""
DO $cathouse$
DECLARE
  tables text;
  item record;
BEGIN
  SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') INTO tables
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p')
     AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                     AND d.objid = c.oid AND d.deptype = 'e');
  IF tables IS NOT NULL THEN
    EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
  END IF;
  FOR item IN
    SELECT c.relkind, format('%I.%I', n.nspname, c.relname) AS name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('S', 'm')
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                       AND d.objid = c.oid AND d.deptype = 'e')
  LOOP
    IF item.relkind = 'S' THEN
      EXECUTE 'ALTER SEQUENCE ' || item.name || ' RESTART';
    ELSE
      EXECUTE 'REFRESH MATERIALIZED VIEW ' || item.name || ' WITH NO DATA';
    END IF;
  END LOOP;
  PERFORM lo_unlink(oid) FROM pg_largeobject_metadata;
END
$cathouse$
"""


# the role's verifier when it may log in to the database: never a superuser's (the
# control plane's bootstrap role), never one past its VALID UNTIL
_VERIFIER_SQL = """
SELECT a.rolpassword FROM pg_authid a
 WHERE a.rolname = %s AND a.rolcanlogin AND NOT a.rolsuper
   AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())
   AND EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = %s AND d.datallowconn)
"""


def read_verifier(instance: Instance, role: str, database: str) -> str | None:
    """The SCRAM verifier the relay checks a client's proof against, when `role` may
    log in to `database` of `instance`."""
    with admin_session(instance) as session:
        row = session.execute(_VERIFIER_SQL, (role, database)).fetchone()
    text = row[0] if row else None
    return text if isinstance(text, str) and text.startswith("SCRAM-SHA-256$") else None


def login_verifiers(instance: Instance) -> dict[str, str]:
    """Role -> SCRAM verifier of the roles the relay lets log in to `instance`."""
    with admin_session(instance) as session:
        return {str(name): str(verifier) for name, verifier in session.execute(_VERIFIERS_SQL)}


def standby_of(parent: Instance, compute: ComputeHome, name: str, *,
               verifiers: Mapping[str, str] | None = None) -> Instance:
    """A hot standby holding `parent` as it is now. `verifiers` (role -> SCRAM
    verifier): the logins it must accept where they differ from the parent's."""
    if not verifiers:
        return fork(parent, compute, name, read_only=True)
    return as_standby_with(fork(parent, compute, name), verifiers)


def as_standby_with(child: Instance, verifiers: Mapping[str, str]) -> Instance:
    """The running, writable `child` (ours alone yet) takes `verifiers` and starts
    again as a hot standby; removed on failure."""
    try:
        with admin_session(child) as session:
            present = {row[0] for row in session.execute("SELECT rolname FROM pg_roles")}
            for role, verifier in verifiers.items():
                if role in present:
                    session.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(verifier)))
        stop(child)
        write_private(child.paths.data / "standby.signal", "", owner=child.owner)
        start(child)
    except BaseException:
        remove(child)
        raise
    return child


def differing(wanted: Mapping[str, str], present: Mapping[str, str]) -> dict[str, str]:
    """The verifiers of `wanted` that `present` does not have as they are."""
    return {role: verifier for role, verifier in wanted.items() if present.get(role) != verifier}


def empty_databases(instance: Instance) -> list[str]:
    """Drop every row of every database of the running `instance` (see the module);
    the databases emptied."""
    with admin_session(instance) as session:
        names = [str(row[0]) for row in session.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND datname <> 'template1'")]
    for database in names:
        with admin_session(instance, database) as session:
            session.execute("SET session_replication_role = replica")
            session.execute(_EMPTY_DATABASE)
    return names
