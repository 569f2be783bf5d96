"""One spare branch per machine and template: forked ahead, claimed by the next session.

A warm session's only slow step is its fork (on Neon a POST and an operation, about
1.5 s). So after a session has its branch, a detached child process (`refill`, this
module's `main`) forks one more branch from the same template and records it in the
home (`<home>/spares/<slot>.json`, no secret in it). The next session on this machine
takes that record under a file lock, which removes it (two sessions never get the same
spare), asks for the spare's endpoint and URIs in the round trip it already makes for
its parent and the project's harness branches, and uses the spare when the listing shows
it still forked from the very template this session found (same id, same fingerprint,
made on this machine, not about to expire). Otherwise the spare is deleted and the
session forks as before.

A spare carries the harness marks with kind `spare` and an `expires_at` (SPARE_TTL), so
an unclaimed one dies on its own; `cathouse-branch gc` removes one of other migrations
at once (`cathouse_harness.cleanup.gc`). A claimed one is renamed to the session's name
and its expiry becomes the session's, which the watchdog keeps pushing forward.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cathouse_harness.branching.lifecycle import (
    BranchHandle,
    checked_handle,
    create_owned_branch,
    delete_owned_branch,
    expiry,
    writable_endpoint,
)
from cathouse_harness.branching.names import SPARE_PREFIX, clean_name_part
from cathouse_harness.support.locking import file_lock
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.marks import MARK_FINGERPRINT, MARK_HOST, MARK_KIND
from cathouse_harness.support.safe_paths import private_home, write_private
from cathouse_harness.support.timestamps import format_time, parse_time

if TYPE_CHECKING:
    from cathouse_harness.neon.client import NeonClient
    from cathouse_harness.neon.models import Branch, Endpoint
    from cathouse_harness.support.redact import Secret

log = get_logger("spares")

# An unclaimed spare's life: long enough for an afternoon's edit-run loop between
# runs, short enough that a machine that stopped testing leaves nothing for long.
SPARE_TTL = timedelta(hours=1)
# A spare this close to its expiry is not claimed: Neon may delete it under the session
# before the claim's own expiry (the rename, off the critical path) lands.
MIN_LIFE = timedelta(minutes=2)


def spare_name(fingerprint: str) -> str:
    host = clean_name_part(socket.gethostname())
    return f"{SPARE_PREFIX}{host}/{fingerprint[:16]}-{secrets.token_hex(3)}"


def is_unclaimed_spare(branch: Branch) -> bool:
    """A spare nobody claimed yet: a claim renames it to its session's name."""
    return branch.annotation.get(MARK_KIND) == "spare" and branch.name.startswith(SPARE_PREFIX)


@dataclass(frozen=True)
class Slot:
    """Which spare a session may use: one per machine (the home), Neon project, parent,
    migration fingerprint, database and role."""

    home: Path
    api_host: str
    project_id: str
    parent: str
    fingerprint: str
    database: str
    role: str

    @property
    def key(self) -> str:
        text = "\0".join(
            (self.api_host, self.project_id, self.parent, self.fingerprint, self.database, self.role)
        )
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def directory(self) -> Path:
        return private_home(self.home.expanduser().resolve()) / "spares"

    @property
    def record_path(self) -> Path:
        return self.directory / f"{self.key}.json"

    def _lock_path(self, what: str) -> Path:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        return self.directory / f"{self.key}.{what}"


@dataclass(frozen=True)
class SpareRecord:
    """What the home knows of a ready spare (ids only: the URIs are asked for at claim)."""

    branch_id: str
    name: str
    template_id: str
    fingerprint: str
    project_id: str
    expires_at: str

    def expires(self) -> datetime | None:
        return parse_time(self.expires_at)


def recorded(slot: Slot) -> SpareRecord | None:
    """The slot's spare as recorded, without claiming it (None when there is none)."""
    try:
        data = json.loads(slot.record_path.read_text())
        return SpareRecord(**{k: str(data[k]) for k in SpareRecord.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring an unreadable spare record %s: %s", slot.record_path, exc)
        return None


def claim(slot: Slot, now: datetime | None = None) -> SpareRecord | None:
    """Take the slot's spare: under the slot's lock its record is read and removed, so a
    second session never gets it. None when there is none or it is about to expire (it
    dies on its own)."""
    with file_lock(slot._lock_path("lock")):
        record = recorded(slot)
        slot.record_path.unlink(missing_ok=True)
    if record is None or record.project_id != slot.project_id:
        return None
    expires = record.expires()
    if expires is None or expires - (now or datetime.now(UTC)) < MIN_LIFE:
        log.info("spare %s (%s) is about to expire: not claimed", record.name, record.branch_id)
        return None
    return record


def _record(slot: Slot, record: SpareRecord) -> bool:
    """Record a new spare unless the slot holds one (False: then it is one too many)."""
    with file_lock(slot._lock_path("lock")):
        if recorded(slot) is not None:
            return False
        write_private(slot.record_path, json.dumps(asdict(record)))
    return True


def why_not_usable(
    record: SpareRecord, listed: list[Branch] | None, *, template_id: str, fingerprint: str,
    now: datetime | None = None,
) -> str | None:
    """Why the claimed spare must not serve this session; None when it may. Read from the
    project's listing, which the session asked for anyway (no round trip of its own)."""
    if listed is None:
        return "the project's branches could not be listed"
    spare = next((b for b in listed if b.id == record.branch_id), None)
    if spare is None:
        return "it is gone"
    marks = spare.annotation
    if marks.get(MARK_KIND) != "spare" or not spare.name.startswith(SPARE_PREFIX):
        return "it is no unclaimed spare"
    if spare.parent_id != template_id or record.template_id != template_id:
        return "its template changed"
    if marks.get(MARK_FINGERPRINT) != fingerprint or record.fingerprint != fingerprint:
        return "it holds other migrations"
    if marks.get(MARK_HOST) != socket.gethostname()[:60]:
        return "another machine made it"
    expires = spare.expires_at
    if expires is None or expires - (now or datetime.now(UTC)) < MIN_LIFE:
        return "it is about to expire"
    return None


async def connection_parts(
    client: NeonClient, record: SpareRecord, *, database: str, role: str
) -> tuple[list[Endpoint], Secret, Secret]:
    """The spare's endpoints and its direct and pooled URIs, asked for together (one round
    trip, sent beside the session's other lookups)."""
    endpoints, direct, pooled = await asyncio.gather(
        client.list_branch_endpoints(record.project_id, record.branch_id),
        client.connection_uri(record.project_id, branch_id=record.branch_id,
                              database_name=database, role_name=role),
        client.connection_uri(record.project_id, branch_id=record.branch_id,
                              database_name=database, role_name=role, pooled=True),
    )
    return list(endpoints), direct, pooled


def spare_handle(
    record: SpareRecord, parts: tuple[list[Endpoint], Secret, Secret], *, template_id: str
) -> BranchHandle | None:
    """The session's handle on the spare, with the same URL checks as any fork's."""
    endpoints, direct, pooled = parts
    endpoint = writable_endpoint(endpoints)
    if endpoint is None:
        return None
    return checked_handle(
        record.project_id, record.branch_id, record.name, template_id, endpoint,
        str(direct), str(pooled), "session",
    )


def forget_expired(home: Path, now: datetime | None = None) -> list[str]:
    """Remove the records of spares past their expiry (Neon has deleted them); one line
    each. For `cathouse-branch gc` (`cathouse_harness.cleanup.leftovers`)."""
    directory = home / "spares"
    if not directory.is_dir():
        return []
    now = now or datetime.now(UTC)
    done: list[str] = []
    for path in directory.glob("*.json"):
        with file_lock(path.with_suffix(".lock")):
            try:
                expires = parse_time(json.loads(path.read_text()).get("expires_at"))
            except (OSError, ValueError, AttributeError):
                expires = None
            if expires is None or expires <= now:
                path.unlink(missing_ok=True)
                done.append(f"removed {path} (its spare expired)")
    return done


# --------------------------------------------------------------------------- the refill


@dataclass(frozen=True)
class Refill:
    """What the refill child needs (the API key comes on its stdin)."""

    slot: Slot
    template_id: str

    def argv(self) -> list[str]:
        fields = {**asdict(self.slot), "home": str(self.slot.home), "template_id": self.template_id}
        return [sys.executable, "-m", "cathouse_harness.branching.spares", json.dumps(fields)]

    @classmethod
    def from_argv(cls, text: str) -> Refill:
        data = json.loads(text)
        template_id = data.pop("template_id")
        data["home"] = Path(data["home"])
        return cls(Slot(**data), template_id)


def start_refill(refill: Refill, api_key: str) -> subprocess.Popen[bytes] | None:
    """Start the refill in a detached child (its own session: Ctrl-C in the terminal does
    not stop it half-way) unless the slot already holds a spare. The child outlives the
    run when it must; SPARE_TTL bounds whatever it leaves."""
    if recorded(refill.slot) is not None:
        return None
    logs = refill.slot.home.expanduser().resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(logs / "spares.log", "ab") as out:
        process = subprocess.Popen(
            refill.argv(), stdin=subprocess.PIPE, stdout=out, stderr=out,
            start_new_session=True, close_fds=True,
        )
    assert process.stdin is not None
    try:
        process.stdin.write(api_key.encode() + b"\n")
        process.stdin.close()
    except OSError:  # it died at once; its log says why
        pass
    return process


async def refill(client: NeonClient, job: Refill) -> SpareRecord | None:
    """Fork the slot's spare from the template and record it; None when the slot holds
    one already or another refill is at it."""
    slot = job.slot
    # the one refill of the slot on this machine; another one running: nothing to do
    with file_lock(slot._lock_path("refill"), wait=False) as alone:
        if not alone or recorded(slot) is not None:
            return None
        name = spare_name(slot.fingerprint)
        # no later than the branch's own expires_at, which the create computes after this
        expires = expiry(SPARE_TTL)
        handle = await create_owned_branch(
            client, slot.project_id, name=name, parent_id=job.template_id, ttl=SPARE_TTL,
            kind="spare", run_id="spare", database=slot.database, role=slot.role,
            fingerprint=slot.fingerprint,
        )
        record = SpareRecord(
            branch_id=handle.id, name=handle.name, template_id=job.template_id,
            fingerprint=slot.fingerprint, project_id=slot.project_id,
            expires_at=format_time(expires),
        )
        if not _record(slot, record):  # cannot happen under the refill lock; be sure anyway
            await delete_owned_branch(client, slot.project_id, handle.id)
            return None
        log.info("spare %s (%s) ready for the next session", handle.name, handle.id)
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cathouse_harness.branching.spares")
    parser.add_argument("job", help="the refill as JSON (Refill.argv)")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s spares %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    api_key = sys.stdin.buffer.readline().decode().strip()
    if not api_key:
        return 2
    job = Refill.from_argv(args.job)
    from cathouse_harness.neon.client import NeonClient, TransportOptions
    from cathouse_harness.support.sync import run_sync

    async def work() -> SpareRecord | None:
        async with NeonClient(api_key, TransportOptions(api_host=job.slot.api_host)) as client:
            return await refill(client, job)

    try:
        run_sync(work(), name="cathouse-spare")
    except Exception as exc:  # the next session forks as before; the log says why
        log.error("could not make a spare: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
