"""Running the local Neon server: in the foreground, as a shared daemon, or as `emulator`.

One server per home and storage kind (`memory` keeps PostgreSQL's data in /dev/shm for
throwaway test branches, `disk` keeps it under the home for developers' long-lived
branches; each has its own cluster and so its own project and state file). A running
server is found through `<home>/local-server.json` (`local-server-disk.json` for disk
storage; 0600, no secrets: the key stays in `<home>/local-api-key`) and is trusted only
when its pid is alive and it answers on its port with that key.

Finding such a server is `cathouse_harness.local.discovery`'s job (light, for every session
start). `ensure_local_server` (launch.py) reuses one or starts a detached daemon
(`python -m cathouse_harness.local.server`), under an exclusive `flock` so that two processes
starting at once get one server. The daemon exits, stopping PostgreSQL, after
`idle_timeout` seconds without an API request or a client connection to an endpoint, and
never while an unexpired dev branch exists. The server binds loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.control.state import load_or_create_api_key
from cathouse_harness.local.discovery import (
    STORAGES,
    LocalServerInfo,
    discovery_path,
    read_discovery,
    resolve_home,
    running_server,
)
from cathouse_harness.local.launch import (  # noqa: F401  (re-exported: callers import them from here)
    RESTART_SIGNAL,
    START_TIMEOUT,
    check_data_plane,
    check_storage,
    ensure_local_server,
    keep_data_plane,
    stop_local_server,
)
from cathouse_harness.local.sim.faults import ENV_VAR as FAULTS_ENV
from cathouse_harness.local.sim.faults import FaultConfig, FaultInjector, parse_faults
from cathouse_harness.local.sim.latency import ENV_VAR as LATENCY_ENV
from cathouse_harness.local.sim.latency import LatencyProfile, parse_latency
from cathouse_harness.support import env
from cathouse_harness.support.interrupt import stop_all
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.polling import Backoff, wait_until_async
from cathouse_harness.support.redact import Secret
from cathouse_harness.support.safe_paths import write_private

if TYPE_CHECKING:
    import uvicorn
    from cathouse_harness.local.control.control import LocalNeon

# uvicorn, the ASGI app and the control plane are imported only where the server runs;
# a process that only needs a server running uses launch.py and never imports them.

log = get_logger("local.server")

_STARTED_POLL = Backoff(0.005)


# ---------------------------------------------------------------------- paths


def check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise LocalServerError(
            f"the local Neon server binds loopback only, not {host!r}",
            hint="use 127.0.0.1",
        )


# ---------------------------------------------------------------------- serving


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class _Server(uvicorn.Server):
        # We install our own signal handlers: uvicorn's re-raise the signal after shutting
        # down, which would kill the daemon before it removes its discovery file.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Server


@dataclass
class ServerHandle:
    """A server being run by `serve`; `stop()` asks it to shut down (from any thread),
    while it starts too: the start ends after the step it is in, and what it made goes."""

    server: uvicorn.Server | None = None
    info: LocalServerInfo | None = None
    neon: LocalNeon | None = None
    starting: asyncio.Task[None] | None = None
    stopping: bool = False
    stop_asked: float | None = None  # monotonic
    # the loop's executor when `run_server` set it: how a start is stopped between steps
    executor: _SteppingExecutor | None = None

    def stop(self) -> None:
        self.stopping = True
        self.stop_asked = self.stop_asked or time.monotonic()
        if self.server is not None:
            self.server.should_exit = True
        elif self.starting is not None:
            # a client gave up on this start (launch.py's `_abandon`): ~1-9 s of initdb,
            # PostgreSQL's start and the root branch are not waited out
            self.starting.get_loop().call_soon_threadsafe(self._end_start)

    def _end_start(self) -> None:
        """On the loop. A step in a thread (`asyncio.to_thread`: initdb, a PostgreSQL's
        start) cannot be cancelled, and cancelling the coroutine that awaits it, or will
        resume with its result, would drop what it returns (the instances' directory, a
        lease) where the stop looks for it: the start ends when it asks for its next step
        instead (the last one ends it anyway, and the server then stops unpublished).
        What the step runs that may be killed (initdb) is killed."""
        if self.starting is None or self.starting.done():
            return
        if self.executor is None:  # `serve` run by other code than `run_server`
            self.starting.cancel()
            return
        self.executor.refusing = True
        stop_all(wait=0)

    def stop_for_restart(self) -> None:
        """Stop, keeping an in-memory cluster (which a stop removes) for the next start."""
        dataplane = getattr(self.neon, "dataplane", None)
        if dataplane is not None:
            dataplane.keep_cluster = True
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the socket says it is TCP, and without it every keep-alive request waited
    # ~40 ms for a delayed ACK (Nagle against the response's separate header/body writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _make_dataplane(home: Path, storage: str) -> Any:
    from cathouse_harness.local.instance_plane import InstanceDataPlane

    keep_data_plane(home, storage)
    return InstanceDataPlane(home, storage=storage)


async def serve(
    home: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    storage: str = "memory",
    faults: FaultConfig | None = None,
    latency: LatencyProfile | None = None,
    idle_timeout: float | None = None,
    ready: Callable[[LocalServerInfo], None] | None = None,
    handle: ServerHandle | None = None,
    stop_postgres: bool = True,
    dataplane: Any = None,
    branches_limit: int | None = None,
    database: str | None = None,
    role: str | None = None,
) -> None:
    """Start the data plane and the API, call `ready`, serve until stopped, shut down.
    `branches_limit` overrides what /users/me advertises and creates are held to;
    `database` and `role` are what a new project is made with (`LocalNeon`)."""
    from cathouse_harness.local.control.control import LocalNeon

    check_storage(storage)
    if dataplane is None:
        check_data_plane(home, storage)
    sock = bind_socket(host, port)
    handle = handle or ServerHandle()
    api_key = Secret(load_or_create_api_key(home))
    injector = FaultInjector(faults)
    limits: dict[str, Any] = {"branches_limit": branches_limit} if branches_limit else {}
    if latency is not None:
        limits["latency"] = latency
    neon = LocalNeon(
        home, dataplane or _make_dataplane(home, storage), storage=storage, faults=injector,
        database=database, role=role, **limits,
    )
    attach = getattr(neon.dataplane, "attach", None)
    if attach is not None:  # the instance data plane reads the control plane's records
        attach(neon)
    if neon.latency.active:
        log.info("latency profile %s: %s", neon.latency.name or "custom", neon.latency.to_spec())
    handle.neon = neon
    try:
        if handle.stopping:
            raise asyncio.CancelledError
        handle.starting = asyncio.ensure_future(neon.start())
        try:
            await handle.starting
        finally:
            if handle.executor is not None:
                handle.executor.refusing = False  # the stop's own steps run in it
    except BaseException:
        sock.close()
        # a step still in a thread (a start cancelled from outside, or failed while
        # another ran) must have made what it makes before the stop looks for it
        if handle.executor is not None:
            await handle.executor.settled()
        with contextlib.suppress(Exception):
            await neon.stop(stop_postgres=stop_postgres)
        if handle.stopping:  # cancelled, or a step failed because it was stopped
            log.info("stopped while starting, %.2f s after it was asked; what the start made "
                     "is removed", time.monotonic() - (handle.stop_asked or time.monotonic()))
            return
        raise
    try:
        await _serve_api(neon, api_key, injector, sock, host, home, handle, ready, idle_timeout)
    finally:
        sock.close()
        await neon.stop(stop_postgres=stop_postgres)


async def _serve_api(
    neon: LocalNeon,
    api_key: Secret,
    injector: FaultInjector,
    sock: socket.socket,
    host: str,
    home: Path,
    handle: ServerHandle,
    ready: Callable[[LocalServerInfo], None] | None,
    idle_timeout: float | None,
) -> None:
    """Serve the HTTP API on `sock` until asked to stop or idle for `idle_timeout` s."""
    import uvicorn
    from cathouse_harness.local.api.app import create_app

    config = uvicorn.Config(
        create_app(neon, api_key, injector),
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="auto",  # uvicorn's choice: httptools (C) when installed, else h11
        timeout_graceful_shutdown=5,
    )
    server = _server_class()(config)
    handle.server = server
    server.should_exit = handle.stopping  # asked between the start's end and now
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until_async(
        lambda: server.started or serving.done(), timeout=None, backoff=_STARTED_POLL
    )
    if serving.done():
        serving.result()
        raise LocalServerError("the local Neon server stopped while starting")
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    info = LocalServerInfo(
        api_host=f"http://{url_host}:{bound_port}/api/v2",
        api_key=api_key,
        project_id=neon.state.project_id,
        pid=os.getpid(),
        port=bound_port,
        home=home,
    )
    handle.info = info
    # idle counts from here: starting (a template's initdb, the data plane) is not idling
    neon.touch()
    if ready is not None and not handle.stopping:  # a stopped start is never published
        ready(info)
    while not serving.done():
        await asyncio.wait({serving}, timeout=0.25)
        if idle_timeout and neon.idle_seconds() > idle_timeout:
            log.info("nothing used the server for %.0f s; shutting down", idle_timeout)
            server.should_exit = True
    serving.result()


def run_server(
    home: Path,
    *,
    port: int = 0,
    storage: str = "memory",
    host: str = "127.0.0.1",
    ready: Callable[[LocalServerInfo], None] | None = None,
    idle_timeout: float | None = None,
    faults: FaultConfig | None = None,
    latency: LatencyProfile | None = None,
    database: str | None = None,
    role: str | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (or idle), then stop everything,
    PostgreSQL included. Faults default to `CATHOUSE_LOCAL_FAULTS`, the latency profile
    to `CATHOUSE_LOCAL_LATENCY`."""
    check_loopback(host)
    check_storage(storage)
    home = resolve_home(home)
    if faults is None:
        faults = parse_faults(env.read(FAULTS_ENV))
    if latency is None:
        latency = parse_latency(env.read(LATENCY_ENV))
    handle = ServerHandle()

    def started(info: LocalServerInfo) -> None:
        # once this server holds its own cluster: what earlier ones left, off the start's path
        threading.Thread(target=_clean_leftovers, args=(home,), name="cathouse-leftovers",
                         daemon=True).start()
        if ready is not None:
            ready(info)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handle.executor = _SteppingExecutor(thread_name_prefix="cathouse-server")
        loop.set_default_executor(handle.executor)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, handle.stop)
            loop.add_signal_handler(RESTART_SIGNAL, handle.stop_for_restart)
        await serve(
            home,
            host=host,
            port=port,
            storage=storage,
            faults=faults,
            latency=latency,
            idle_timeout=idle_timeout,
            ready=started,
            handle=handle,
            database=database,
            role=role,
        )

    from cathouse_harness.local.compute import lease

    # from before its start (which copies the initdb cache) to its last stop; as root,
    # PostgreSQL runs as another user (`pg_binaries.resolve_os_user`), whatever the plane
    caches = lease.hold_caches(home, switch=os.geteuid() == 0)
    try:
        _run_loop(main)
    finally:
        lease.release(caches)


class _SteppingExecutor(ThreadPoolExecutor):
    """The loop's executor (`asyncio.to_thread`). It keeps the work not done yet, and
    while `refusing` (a start being stopped) a new step ends the coroutine that asks for
    it, as a cancellation at that point would."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pending: set[Future[Any]] = set()
        self.refusing = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self.refusing:
            raise asyncio.CancelledError
        future = super().submit(fn, *args, **kwargs)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future

    async def settled(self) -> None:
        """Until the work submitted so far has finished."""
        if self.pending:
            await asyncio.wait([asyncio.wrap_future(future) for future in list(self.pending)])


def _clean_leftovers(home: Path) -> None:
    from cathouse_harness.cleanup.leftovers import clean_leftovers

    try:
        clean_leftovers(home)
    except Exception as exc:  # housekeeping must never take the server down
        log.warning("cleaning up after earlier servers failed: %s", exc)


def _run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the server on uvloop where it is installed (not on Windows): the endpoint
    proxy copies every byte of every test's queries, and on uvloop a round trip through
    it and PgBouncer takes about a third less time."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    uvloop.run(main())


def publish(info: LocalServerInfo, storage: str) -> None:
    """Write the discovery file through which other processes find this server."""
    write_private(
        discovery_path(info.home, storage),
        json.dumps(
            {
                "api_host": info.api_host,
                "project_id": info.project_id,
                "pid": info.pid,
                "port": info.port,
                "storage": storage,
                "started_at": time.time(),
            }
        ),
    )


def _unpublish(home: Path, storage: str) -> None:
    data = read_discovery(home, storage)
    if data and data.get("pid") == os.getpid():
        discovery_path(home, storage).unlink(missing_ok=True)


# ---------------------------------------------------------------------- emulator


def run_emulator(
    port: int, home: Path, storage: str, out: TextIO, *, database: str | None = None,
    role: str | None = None,
) -> int:
    """Foreground server for `cathouse-branch emulator`.

    Prints `NEON_API_HOST=…`, `NEON_API_KEY=…` and `NEON_PROJECT_ID=…` to `out` as soon
    as it answers (shell-ready lines), logs on stderr, and exits 0 on Ctrl-C.
    """
    import logging

    home = resolve_home(home)
    check_storage(storage)
    if running_server(home, storage) is not None:
        raise LocalServerError(
            f"a local Neon server with {storage} storage already runs for {home}",
            hint="stop it first, or use another --home",
        )
    logger = logging.getLogger("cathouse_harness")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    started = time.monotonic()

    def ready(info: LocalServerInfo) -> None:
        out.write(f"NEON_API_HOST={info.api_host}\n")
        out.write(f"NEON_API_KEY={info.api_key.reveal()}\n")
        out.write(f"NEON_PROJECT_ID={info.project_id}\n")
        out.flush()
        publish(info, storage)
        print(
            f"local Neon server ready in {time.monotonic() - started:.2f} s "
            f"({storage} storage, home {home}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )

    try:
        run_server(home, port=port, storage=storage, ready=ready, database=database, role=role)
    except KeyboardInterrupt:
        pass
    finally:
        _unpublish(home, storage)
    print("local Neon server stopped", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------------- daemon entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cathouse_harness.local.server")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--storage", choices=STORAGES, default="memory")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--idle-timeout", type=float, default=900.0)
    parser.add_argument("--daemon", action="store_true", help="publish the discovery file and exit when idle")
    parser.add_argument("--database", default=None, help="a new project's database (default neondb)")
    parser.add_argument("--role", default=None, help="a new project's role (default neondb_owner)")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s: %(message)s",
    )
    home = resolve_home(args.home)
    started = time.monotonic()

    def ready(info: LocalServerInfo) -> None:
        if args.daemon:
            publish(info, args.storage)
        log.info(
            "local Neon server answering at %s after %.2f s",
            info.api_host,
            time.monotonic() - started,
        )

    try:
        run_server(
            home,
            port=args.port,
            storage=args.storage,
            host=args.host,
            ready=ready,
            idle_timeout=args.idle_timeout if args.daemon else None,
            database=args.database,
            role=args.role,
        )
    finally:
        _unpublish(home, args.storage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
