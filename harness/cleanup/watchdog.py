"""A small process that outlives its owner and cleans up after it.

The owner (a test process that created branches) starts the watchdog in its own session,
writes the API key to the watchdog's stdin and keeps that pipe open. The kernel closes
the pipe when the owner dies for any reason, SIGKILL included, so the watchdog learns of
the death at once instead of polling. It then deletes every branch still recorded in the
owner's marker directory. While the owner lives, the watchdog pushes those branches'
`expires_at` forward (the heartbeat), so a leak is bounded by one TTL even if the
watchdog itself is killed.

Marker directory: one file per branch, named by branch id, holding the project id. The
owner removes a marker after deleting the branch itself, or to keep a branch on purpose.
At its end the owner asks for its deletes without waiting for their operations (about a
second each on Neon) and renames each marker `deleting-<id>`: once the owner is gone the
watchdog confirms those deletes (asking again if one failed), without holding the owner up.
Before a create, the owner records the branch's *name* (`name-…` files) with its run id
and owner token: a run killed while the create is in flight still has its branch found
by name and deleted, but only when the branch found carries that run id and token (the
name may be another run's, given the same run id).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from cathouse_harness.cleanup.runs import DELETING, branch_file_name, owned_files, owner_token, prune
from cathouse_harness.support.log import get_logger

log = get_logger("watchdog")

T = TypeVar("T")


@dataclass
class WatchdogHandle:
    process: subprocess.Popen[bytes]
    marker_dir: Path
    run_id: str | None = None

    def record(self, project_id: str, branch_id: str, name: str) -> None:
        path = self.marker_dir / branch_file_name(branch_id)
        path.write_text(json.dumps({"project_id": project_id, "name": name}))
        self.forget_name(name)

    def record_name(self, project_id: str, name: str) -> None:
        """Before a create: the branch may exist before we ever learn its id."""
        path = self.marker_dir / name_marker(name)
        path.write_text(json.dumps(
            {"project_id": project_id, "name": name, "run_id": self.run_id, "owner": owner_token()}
        ))

    def forget_name(self, name: str) -> None:
        (self.marker_dir / name_marker(name)).unlink(missing_ok=True)

    def forget(self, branch_id: str) -> None:
        (self.marker_dir / branch_file_name(branch_id)).unlink(missing_ok=True)

    def deleting(self, branch_id: str) -> None:
        """The branch's delete was accepted: confirm it once the owner is gone."""
        name = branch_file_name(branch_id)
        try:
            os.replace(self.marker_dir / name, self.marker_dir / f"{DELETING}{name}")
        except FileNotFoundError:
            pass

    def confirming(self) -> bool:
        """Whether deletes wait for this watchdog's confirmation (`deleting`)."""
        return bool(_deleting(self.marker_dir))

    def release(self) -> None:
        """At the owner's end: wait for the watchdog only when it still has branches to
        delete. With nothing recorded it just exits, which takes it a few hundred ms (it
        imports the client first), and with deletes to confirm (`deleting-` markers) it
        outlives the owner to do that: either way the pipe closes and a thread reaps it."""
        if owned_files(self.marker_dir):
            self.stop()
            prune(self.marker_dir)
            return
        self._close_pipe()
        threading.Thread(target=self.process.wait, name="cathouse-watchdog-reaper", daemon=True).start()
        # The empty marker directory, and the run's directories once no other worker (or
        # kept branch) uses them: a run that ended cleanly leaves nothing under the home.
        prune(self.marker_dir)

    def _close_pipe(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Close the pipe: the watchdog deletes what is still recorded, then exits."""
        self._close_pipe()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def heartbeat_interval(ttl: timedelta) -> float:
    """A third of the TTL: two missed beats still leave the branch alive."""
    return max(5.0, min(ttl.total_seconds() / 3, 300.0))


def start_watchdog(
    marker_dir: Path,
    *,
    api_host: str,
    api_key: str,
    ttl: timedelta,
    log_file: Path,
    interval: float | None = None,
    run_id: str | None = None,
) -> WatchdogHandle:
    for _attempt in range(3):  # a finishing worker may prune the run's directory meanwhile
        try:
            marker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            break
        except FileNotFoundError:
            continue
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log_handle:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "cathouse_harness.cleanup.watchdog",
                "--dir", str(marker_dir),
                "--api-host", api_host,
                "--ttl", str(int(ttl.total_seconds())),
                "--interval", str(interval if interval is not None else heartbeat_interval(ttl)),
            ],
            stdin=subprocess.PIPE,
            stdout=log_handle,
            stderr=log_handle,
            start_new_session=True,
            close_fds=True,
        )
    assert process.stdin is not None
    process.stdin.write(api_key.encode() + b"\n")
    process.stdin.flush()
    return WatchdogHandle(process, marker_dir, run_id)


def name_marker(name: str) -> str:
    return "name-" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _markers(marker_dir: Path) -> list[tuple[Path, dict[str, str]]]:
    found: list[tuple[Path, dict[str, str]]] = []
    if not marker_dir.is_dir():
        return found
    for path in marker_dir.iterdir():
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def _recorded(marker_dir: Path, *, deleting: bool = False) -> dict[str, str]:
    """branch id -> project id, for branches whose id is known (with `deleting`, also
    those whose delete was asked for and is to be confirmed)."""
    prefixes = ("br-", f"{DELETING}br-") if deleting else ("br-",)
    return {
        path.name.removeprefix(DELETING): data["project_id"]
        for path, data in _markers(marker_dir)
        if path.name.startswith(prefixes) and "project_id" in data
    }


def _deleting(marker_dir: Path) -> list[Path]:
    try:
        return [path for path in marker_dir.iterdir() if path.name.startswith(DELETING)]
    except OSError:
        return []


@dataclass(frozen=True)
class _Pending:
    """A create whose answer the owner never saw: the branch is its own only if it
    carries the owner's run id and token."""

    path: Path
    project_id: str
    name: str
    run_id: str
    owner: str


def _pending_names(marker_dir: Path) -> list[_Pending]:
    return [
        _Pending(path, data["project_id"], data["name"], data["run_id"], data["owner"])
        for path, data in _markers(marker_dir)
        if path.name.startswith("name-")
        and all(isinstance(data.get(k), str) for k in ("project_id", "name", "run_id", "owner"))
    ]


async def _heartbeat(api_host: str, api_key: str, marker_dir: Path, ttl: timedelta) -> None:
    from cathouse_harness.branching.lifecycle import extend_expiry
    from cathouse_harness.neon.client import NeonClient, TransportOptions

    recorded = _recorded(marker_dir)
    if not recorded:
        return
    async with NeonClient(api_key, TransportOptions(api_host=api_host)) as client:
        by_project: dict[str, list[str]] = {}
        for branch_id, project_id in recorded.items():
            by_project.setdefault(project_id, []).append(branch_id)
        for project_id, ids in by_project.items():
            await extend_expiry(client, project_id, ids, ttl)


async def _clean_up(api_host: str, api_key: str, marker_dir: Path) -> int:
    import asyncio

    from cathouse_harness.branching.lifecycle import delete_owned_branch, find_own_branch
    from cathouse_harness.neon.client import NeonClient, TransportOptions

    failures = 0
    recorded = _recorded(marker_dir, deleting=True)
    pending = _pending_names(marker_dir)
    if not recorded and not pending:
        return 0
    async with NeonClient(api_key, TransportOptions(api_host=api_host)) as client:
        for attempt in range(3):
            # A create still in flight when the owner died lands a moment later.
            for item in list(pending):
                branch = await find_own_branch(
                    client, item.project_id, item.name, run_id=item.run_id, owner=item.owner
                )
                if branch is not None:
                    recorded[branch.id] = item.project_id
                    pending.remove(item)
                    item.path.unlink(missing_ok=True)
            if not pending or attempt == 2:
                break
            await asyncio.sleep(1.0)
        for item in pending:
            item.path.unlink(missing_ok=True)
        await _settle_deletes(client, marker_dir)
        for branch_id, project_id in recorded.items():
            try:
                await delete_owned_branch(client, project_id, branch_id)
                (marker_dir / branch_id).unlink(missing_ok=True)
                (marker_dir / f"{DELETING}{branch_id}").unlink(missing_ok=True)
                log.info("watchdog deleted branch %s", branch_id)
            except Exception as exc:  # keep going: every other branch still deserves a try
                failures += 1
                log.error("watchdog could not delete branch %s: %s", branch_id, exc)
    return failures


async def _settle_deletes(client: Any, marker_dir: Path) -> None:
    """Wait for the operations of the deletes the owner asked for (`deleting-` markers):
    a finished one leaves nothing to do (the branch is gone, which the delete below finds
    in one GET), a failed one leaves the branch there to be deleted again."""
    from cathouse_harness.neon.client import NeonOperationError

    asked: dict[str, set[str]] = {}
    for branch_id, project_id in _recorded(marker_dir, deleting=True).items():
        if (marker_dir / f"{DELETING}{branch_id}").exists():
            asked.setdefault(project_id, set()).add(branch_id)
    for project_id, branch_ids in asked.items():
        try:
            running = [
                op for op in await client.list_operations(project_id)
                if op.branch_id in branch_ids and op.pending
            ]
            await client.wait_for_operations(project_id, running)
        except NeonOperationError as exc:
            log.warning("a delete the owner asked for failed (%s); asking again", exc.message)
        except Exception as exc:  # the delete below still looks at each branch itself
            log.warning("could not follow the owner's deletes: %s", exc)


def _run_async(main: Coroutine[Any, Any, T]) -> T:
    # asyncio (and the client, imported where it is used) load only once there is work:
    # the watchdog starts beside every session start, and on a two-core CI machine its
    # imports would compete with the session's own for the CPU.
    from cathouse_harness.support.sync import run_sync

    return run_sync(main, name="cathouse-watchdog")


def run(marker_dir: Path, api_host: str, ttl: timedelta, interval: float | None = None) -> int:
    api_key = sys.stdin.buffer.readline().decode().strip()
    if not api_key:
        return 2
    interval = interval if interval is not None else heartbeat_interval(ttl)
    next_beat = time.monotonic() + interval
    stdin = sys.stdin.buffer.fileno()
    while True:
        timeout = max(0.0, next_beat - time.monotonic())
        readable, _, _ = select.select([stdin], [], [], timeout)
        if readable:
            if not os.read(stdin, 4096):
                break  # the owner is gone (or stopped us on purpose)
            continue
        try:
            _run_async(_heartbeat(api_host, api_key, marker_dir, ttl))
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
        next_beat = time.monotonic() + interval
    # A clean owner leaves nothing recorded: then the client is never even imported.
    failures = 0
    if owned_files(marker_dir) or _deleting(marker_dir):
        failures = _run_async(_clean_up(api_host, api_key, marker_dir))
    prune(marker_dir)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cathouse_harness.cleanup.watchdog")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--api-host", required=True)
    parser.add_argument("--ttl", type=int, default=900)
    parser.add_argument("--interval", type=float, default=None, help="seconds between heartbeats")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s watchdog %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run(args.dir, args.api_host, timedelta(seconds=args.ttl), args.interval)


if __name__ == "__main__":
    sys.exit(main())
