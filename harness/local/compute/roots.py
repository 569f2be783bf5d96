"""A project's first instance: a copy of the home's template with the branch's owner role
and database under their real names, as Neon makes a project's root branch.

Neon hands out no superuser: a project's roles are members of `neon_superuser`, which
may create databases and roles, bypasses row-level security and reads and writes all
data, and nothing more (no file access, no server programs, no settings of the server).
The instance does the same: the bootstrap superuser stays with the control plane (its
password is in the home), and the owner role is an ordinary role with those rights.
"""

from __future__ import annotations

import psycopg
from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.compute.copying import copy_tree
from cathouse_harness.local.compute.instance import Instance, admin_session, remove, start
from cathouse_harness.local.compute.layout import ComputeHome, instance_paths, owned_dir
from cathouse_harness.local.compute.template import ensure_template
from cathouse_harness.local.data.scram import scram_verifier
from cathouse_harness.local.pg_choice import PgInstall
from cathouse_harness.local.pg_layout import SUPERUSER
from psycopg import sql

NEON_SUPERUSER = "neon_superuser"
# the instance's own roles: a branch role of either name would be the bootstrap
# superuser (whose password the control plane keeps) or the role that grants rights
CLUSTER_ROLES = frozenset({SUPERUSER, NEON_SUPERUSER})
# predefined roles Neon grants its role (PostgreSQL 14 and newer have both)
_GRANTED = ("pg_read_all_data", "pg_write_all_data")
_MAX_NAME = 63  # NAMEDATALEN - 1


def check_role_name(name: str) -> None:
    """Refuse the names a branch role may not take: the bootstrap superuser, PostgreSQL's
    reserved `pg_` prefix, and the role that grants the owner its rights."""
    if not name or len(name.encode()) > _MAX_NAME:
        raise LocalServerError(f"role name {name!r} is empty or longer than {_MAX_NAME} bytes")
    if name in CLUSTER_ROLES or name.startswith("pg_"):
        raise LocalServerError(f"role name {name!r} is reserved", hint="choose another role name")


def create_branch_role(session: psycopg.Connection, role: str, password: str | None) -> None:
    """Create `role` as Neon creates a project's roles: LOGIN, member of neon_superuser,
    with its password stored as a SCRAM verifier (never sent as clear text)."""
    check_role_name(role)
    session.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE BYPASSRLS IN ROLE {}").format(
        sql.Identifier(role), sql.Identifier(NEON_SUPERUSER)))
    if password is not None:
        session.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(password))))


def make_root(compute: ComputeHome, install: PgInstall, name: str, *, owner: str, database: str,
              owner_password: str) -> Instance:
    """A started root instance: template copy, neon_superuser, `owner` and `database`."""
    check_role_name(owner)
    template = ensure_template(compute, install)
    paths = instance_paths(compute, name)
    if paths.root.exists():
        raise LocalServerError(f"instance {name} exists already", hint="choose another name")
    owned_dir(paths.root, compute.user)
    instance = Instance(name, paths, compute.user, install, template.superuser_password)
    try:
        copy_tree(template.data, paths.data, owner=instance.owner)
        start(instance)
        with admin_session(instance) as session:
            session.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB CREATEROLE BYPASSRLS").format(
                sql.Identifier(NEON_SUPERUSER)))
            for granted in _GRANTED:
                session.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(granted), sql.Identifier(NEON_SUPERUSER)))
            create_branch_role(session, owner, owner_password)
            session.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(owner)))
    except BaseException:
        remove(instance)
        raise
    return instance
