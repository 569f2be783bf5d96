"""The xdist controller's end-of-run sweep: every branch a run left, and its files.

Kept apart from `cathouse_harness.session.branch_session` so that the controller, which never starts a session
of its own, does not import the client (or asyncio) to find that there is nothing to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cathouse_harness.cleanup.runs import (
    kept_ids,
    owned_markers,
    owner_token,
    remove_run_dir,
    run_dir,
    unchecked_run_dir,
)
from cathouse_harness.support.log import get_logger

if TYPE_CHECKING:
    from cathouse_harness.config.settings import Settings

log = get_logger("runs")


def sweep_run(settings: Settings, run_id: str, *, all_finished: bool = False) -> list[str]:
    """Delete every session branch of a run (the xdist controller's final sweep).

    Only talks to the API when some process of this run recorded a branch, so a run that
    used no harness fixture stays free of API calls. With `all_finished` (every worker
    reported its own teardown) and no branch still recorded, there is nothing the API
    could find either, and the sweep only removes the run's files.
    """
    # looked for before the home is made: a run that used no branch leaves no home
    if not unchecked_run_dir(settings, run_id).exists():
        return []
    directory = run_dir(settings, run_id)
    if all_finished and not owned_markers(directory):
        remove_run_dir(directory)
        return []
    if _gone_with_its_server(settings):
        remove_run_dir(directory)
        return []
    from cathouse_harness.branching.lifecycle import delete_run_branches
    from cathouse_harness.branching.names import run_prefix
    from cathouse_harness.neon.backend import connect_backend, open_client
    from cathouse_harness.support.sync import LoopThread

    backend = connect_backend(settings)
    loop = LoopThread()
    try:
        kept = kept_ids(directory)

        async def _sweep() -> list[str]:
            async with open_client(backend) as client:
                return await delete_run_branches(
                    client, backend.project_id, run_id, keep=kept, owner=owner_token()
                )

        deleted = loop.run(_sweep())
    finally:
        loop.close()
    remove_run_dir(directory)
    log.info("swept %d branch(es) of run %s (%s)", len(deleted), run_id, run_prefix(run_id))
    return deleted




def _gone_with_its_server(settings: Settings) -> bool:
    """The embedded default's in-memory branches go with its server: with none running
    (a Ctrl-C stopped the start, or it stopped), there is nothing to delete, and starting
    one only to find that out would take seconds and leave a server behind."""
    if settings.backend != "embedded" or settings.local_storage != "memory":
        return False
    from cathouse_harness.local.discovery import live_server, resolve_home

    return live_server(resolve_home(settings.home), "memory") is None
