"""One home, one template and one root instance per test module: initdb runs once per
module, every test forks what it needs from the root (a copy, not another initdb)."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cathouse_harness.local.compute import instance as instances
from cathouse_harness.local.compute import layout, roots, users
from cathouse_harness.local.compute.instance import Instance
from cathouse_harness.local.compute.layout import SOCKET_PORT, ComputeHome
from cathouse_harness.local.pg_choice import ENV_VAR, choose_install

OWNER = "neondb_owner"
DATABASE = "neondb"
PASSWORD = "owner-pw-1"


@dataclass
class Computes:
    compute: ComputeHome
    root: Instance
    names: Iterator[int]
    made: list[Instance]

    def name(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"

    def keep(self, instance: Instance) -> Instance:
        self.made.append(instance)
        return instance


def connect(instance: Instance, *, user: str = OWNER, password: str = PASSWORD,
            database: str = DATABASE, autocommit: bool = True) -> psycopg.Connection:
    """A client session over the instance's socket, as the relay will open one."""
    return psycopg.connect(host=str(instance.paths.socket_dir), port=SOCKET_PORT, user=user,
                           password=password, dbname=database, autocommit=autocommit, connect_timeout=10)


@pytest.fixture(scope="module")
def computes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Computes]:
    home = tmp_path_factory.mktemp("compute-home")
    home.chmod(0o700)
    user = users.home_os_user(home)
    compute = layout.open_home(home, user, "memory")
    # the suite's PostgreSQL (tests/conftest.py pins the wheel unless told otherwise)
    install = choose_install(os.environ.get(ENV_VAR) or "wheel", base=compute.base / "none", user=user)
    made: list[Instance] = []
    try:
        root = roots.make_root(compute, install, "root", owner=OWNER, database=DATABASE,
                               owner_password=PASSWORD)
        made.append(root)
        yield Computes(compute, root, itertools.count(1), made)
    finally:
        for instance in made:
            instances.remove(instance)
        shutil.rmtree(compute.base, ignore_errors=True)
        users.remove_home_user(Path(home))
