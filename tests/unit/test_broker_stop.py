"""The end of an interrupted xdist run stops the broker's setup even when the Ctrl-C came
between two of its steps (issue 26, part 4): once the run waited 37.5 s, because the one
request to stop found nothing to cancel yet (the server was starting) and the template's
migration that followed ran its long statement until the broker's join timed out."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.support.interrupt import stop_all, stoppable
from cathouse_harness.xdist import broker as broker_module
from cathouse_harness.xdist.broker import BranchBroker

from tests.plugin._support import EXAMPLE


class BetweenTwoSteps:
    """Stands in for the broker's BranchSession: its setup is between two steps when
    the run is interrupted, and the next one (a statement that runs until cancelled)
    begins only after the first request to stop has found nothing to cancel."""

    report: Any = None

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.cancelled = threading.Event()
        self.finished = False

    def interrupt(self) -> None:
        stop_all()
        self.asked.set()

    def finish(self) -> None:
        self.finished = True

    def setup(self) -> None:
        self.asked.wait()
        with stoppable(self.cancelled.set):
            self.cancelled.wait(60)


def test_an_interrupt_between_two_setup_steps_stops_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # short, so that the code before this change ends the test soon (and fails it)
    monkeypatch.setattr(broker_module, "JOIN_TIMEOUT", 3.0)
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(tmp_path / "home"))
    broker = BranchBroker(load_settings(EXAMPLE, environ={}), "stop-between-steps")
    session = BetweenTwoSteps()
    broker.session = session  # type: ignore[assignment]
    broker._thread = threading.Thread(target=session.setup, daemon=True)
    broker._thread.start()
    broker.close()
    assert session.cancelled.is_set(), "the step begun after the first request ran on"
    assert not broker._thread.is_alive()
    assert session.finished


def test_an_interrupted_session_begins_no_further_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's setup goes on in its own thread after a Ctrl-C: once interrupted, the
    session starts no server, creates no template (what it made is `finish`'s)."""
    from cathouse_harness.local.discovery import running_server
    from cathouse_harness.session.branch_session import BranchSession

    home = tmp_path / "home"
    monkeypatch.setenv("CATHOUSE_HARNESS_HOME", str(home))
    monkeypatch.delenv("NEON_API_KEY", raising=False)
    session = BranchSession(load_settings(EXAMPLE, environ={}), run_id="interrupted-early")
    session.interrupt()
    with pytest.raises(KeyboardInterrupt):
        session.setup()
    session.finish()
    assert running_server(home) is None
