"""A session's side of the spare branch (`cathouse_harness.branching.spares`): claim the
machine's spare before the first round trip, check it against what that round trip
found, use it instead of a fork, and start the refill behind the session's branch.

Nothing here may fail a session: a spare that cannot be used is deleted (without
waiting) and the session forks as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from cathouse_harness.branching.lifecycle import BranchHandle, ensure_owned, expiry
from cathouse_harness.branching.names import owners_name
from cathouse_harness.branching.spares import (
    Refill,
    Slot,
    SpareRecord,
    claim,
    connection_parts,
    spare_handle,
    start_refill,
    why_not_usable,
)
from cathouse_harness.cleanup.runs import owner_token
from cathouse_harness.errors import HarnessError, NeonAPIError
from cathouse_harness.support.log import get_logger

if TYPE_CHECKING:
    import subprocess

    from cathouse_harness.cleanup.watchdog import WatchdogHandle
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.neon.backend import BackendInfo
    from cathouse_harness.neon.client import NeonClient
    from cathouse_harness.neon.models import Branch

log = get_logger("spares")

# how long a session's end waits for its spare's rename, asked for at the claim
RENAME_WAIT = 10.0


class _Session(Protocol):
    settings: Settings
    backend: BackendInfo | None

    @property
    def client(self) -> NeonClient: ...

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]: ...


class SessionSpares:
    """One session's claim and refill. `refill_process` is the refill child, for tests
    that wait for it."""

    def __init__(self, session: _Session) -> None:
        self._session = session
        self._slot: Slot | None = None
        self._template_id: str | None = None
        self._watching: Callable[[], WatchdogHandle] | None = None
        self._renaming: Future[Any] | None = None
        self._refilled = False
        self.refill_process: subprocess.Popen[bytes] | None = None
        self.refill_started = threading.Event()

    def _slot_for(self, fingerprint: str) -> Slot:
        session = self._session
        assert session.backend is not None
        return Slot(
            home=session.settings.home, api_host=session.backend.api_host,
            project_id=session.backend.project_id, parent=session.settings.parent_branch,
            fingerprint=fingerprint, database=session.settings.database,
            role=session.settings.role,
        )

    def claim(self, fingerprint: str, watching: Callable[[], WatchdogHandle]) -> SpareRecord | None:
        """Take the slot's spare; the watchdog knows it from now on (a crash deletes it)."""
        try:
            record = claim(self._slot_for(fingerprint))
        except (OSError, HarnessError) as exc:
            log.warning("could not look for a spare branch: %s", exc)
            return None
        if record is not None:
            self._watching = watching
            watching().record(record.project_id, record.branch_id, record.name)
        return record

    async def parts(self, client: NeonClient, record: SpareRecord | None) -> Any:
        if record is None:
            return None
        settings = self._session.settings
        return await connection_parts(client, record, database=settings.database, role=settings.role)

    def slot_for(self, fingerprint: str, template_id: str) -> None:
        """What the refill forks: the template this session found."""
        if self._session.settings.spare:
            self._slot, self._template_id = self._slot_for(fingerprint), template_id

    def adopt(
        self, record: SpareRecord, parts: Any, listed: list[Branch] | None, template_id: str,
        fingerprint: str,
    ) -> BranchHandle | None:
        """The claimed spare's handle when the listing shows it forked from `template_id`
        and its URIs came back; otherwise it is deleted and None returned."""
        why = why_not_usable(record, listed, template_id=template_id, fingerprint=fingerprint)
        handle = None
        if why is None and isinstance(parts, BaseException):
            why = f"its endpoint could not be read ({parts})"
        if why is None:
            try:
                handle = spare_handle(record, parts, template_id=template_id)
            except HarnessError as exc:
                why = exc.one_line()
            if handle is None and why is None:
                why = "it has no endpoint"
        if handle is not None:
            log.info("claimed spare %s (%s)", record.name, record.branch_id)
            return handle
        log.info("not using spare %s (%s): %s", record.name, record.branch_id, why)
        self._drop(record, listed)
        return None

    def _drop(self, record: SpareRecord, listed: list[Branch] | None) -> None:
        """Delete a claimed spare that is not to be used, without waiting; only when the
        listing shows it as ours (the watchdog's marker stays until the delete is asked)."""
        branch = next((b for b in listed or () if b.id == record.branch_id), None)
        if branch is None:
            return  # gone, or unknown: its marker lets the watchdog look at the end
        ensure_owned(branch, "delete")
        session = self._session
        self._renaming = session._submit(
            session.client.delete_branch(record.project_id, record.branch_id, wait=False)
        )
        if self._watching is not None:  # it confirms the delete once the session is gone
            self._watching().deleting(record.branch_id)

    def use(self, handle: BranchHandle, name: str, run_id: str) -> BranchHandle:
        """The claimed spare as this session's branch: renamed to `name` (another run's
        of that name: this run's owner suffix) with the session's expiry, behind the
        session (a PATCH no test waits for)."""
        session = self._session
        ttl = session.settings.branch_ttl

        async def rename() -> str:
            for candidate in (name, owners_name(name, owner_token())):
                try:
                    await session.client.update_branch(
                        handle.project_id, handle.id, name=candidate, expires_at=expiry(ttl)
                    )
                    return candidate
                except NeonAPIError as exc:
                    if exc.status != 409:
                        raise
            raise NeonAPIError(f"{name} is taken", status=409)

        self._renaming = session._submit(rename())
        return replace(handle, name=name)

    def settle(self) -> str | None:
        """At the session's end: wait (bounded) for the rename or delete asked at the
        claim. The name the spare got, when renamed; None otherwise."""
        renaming, self._renaming = self._renaming, None
        if renaming is None:
            return None
        try:
            result = renaming.result(timeout=RENAME_WAIT)
        except Exception as exc:  # its expiry and the watchdog still hold
            log.warning("a claimed spare's rename or delete failed: %s", exc)
            return None
        return result if isinstance(result, str) else None

    def started_refill(self) -> subprocess.Popen[bytes] | None:
        """The refill child once it has been started (None: none was, or the slot held a
        spare already)."""
        if not self._refilled:
            return None
        self.refill_started.wait(timeout=30)
        return self.refill_process

    def refill(self) -> None:
        """Start the refill once, behind the session's first branch, in a thread: the
        child's start is no test's wait."""
        if self._refilled or self._slot is None or self._template_id is None:
            return
        self._refilled = True
        backend = self._session.backend
        assert backend is not None
        job = Refill(self._slot, self._template_id)
        key = str(backend.api_key)

        def start() -> None:
            try:
                self.refill_process = start_refill(job, key)
            except (OSError, HarnessError) as exc:
                log.warning("could not start the spare's refill: %s", exc)
            finally:
                self.refill_started.set()
            if self.refill_process is not None:
                self.refill_process.wait()  # reaped here: no zombie while the run goes on

        threading.Thread(target=start, name="cathouse-spare-refill", daemon=True).start()
