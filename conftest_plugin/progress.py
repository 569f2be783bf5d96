"""What the terminal shows while the harness sets up, and how fast Ctrl-C ends a run.

The live line: while a session sets up for more than `SHOW_AFTER` seconds, one line says
what it waits for (the embedded server's start, a template's build and the revision its
migration is at, a fork, a worker's database), rewritten in place. Only when pytest's
output is a terminal: a log or a CI job gets no half-drawn lines, and the summary at the
end names each step's time anyway. The engine reports through a plain callable
(`BranchSession(progress=…)`), from whichever thread does the work, so the line is
written with `os.write` to a copy of the terminal's descriptor taken before any test
runs (as pytest's faulthandler does): capturing a test's output does not swallow it, and
no thread has to toggle pytest's capturing.

Ctrl-C: pytest renders the whole traceback of the KeyboardInterrupt (parsing each
frame's source file) and, without `--full-trace`, prints one line of it. Under xdist
every worker does so too, for output nobody sees: seconds on a busy machine. The
traceback is cut to the frames that line comes from. Then each process, the controller
after its workers, spends most of what is left in the cyclic garbage collector: pytest's
search for unraisable exceptions (a full collection at unconfigure and another at its
cleanup) and the interpreter's last pass, 0.3-0.6 s each with SQLAlchemy, Alembic and the
drivers loaded, more under load. An interrupted run skips them (`exit_quickly`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

# a setup step shorter than this shows nothing
SHOW_AFTER = 1.0
# how often the line's clock moves
TICK = 0.25
PREFIX = "cathouse-harness: "


class LiveLine:
    """One line on the terminal, rewritten in place; a no-op when `fd` is None."""

    def __init__(self, fd: int | None, width: int = 80, *, show_after: float = SHOW_AFTER,
                 column: Callable[[], int] = lambda: 0) -> None:
        self._fd = fd
        self._column = column  # where pytest's own output left the cursor
        self._width = max(20, width - 1)
        self._show_after = show_after
        self._lock = threading.Lock()
        self._what: str | None = None
        self._since = 0.0  # when the current stretch of setting up began
        self._shown = False
        self._below = 0  # the column pytest's line ended at, when ours went below it
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def __call__(self, what: str | None) -> None:
        """The engine's callback: what it waits for now; None when it is done."""
        if self._fd is None:
            return
        with self._lock:
            if what is None:
                self._end()
                return
            if self._what is None:
                self._since = time.monotonic()
                self._stop.clear()
                self._ticker = threading.Thread(target=self._tick, name="cathouse-progress", daemon=True)
                self._ticker.start()
            self._what = what
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                if self._what is None:
                    return
                self._draw()

    def _draw(self) -> None:
        waited = time.monotonic() - self._since
        if self._what is None or waited < self._show_after:
            return
        text = f"{PREFIX}[{waited:.0f} s] {self._what}"  # the clock first: a long line is cut
        if len(text) > self._width:
            text = text[: self._width - 1] + "…"
        start = ""
        if not self._shown:
            # below pytest's unfinished line (`test_app.py `), which stays as it is
            self._below = self._column()
            start = "\n" if self._below else ""
        # \r and "erase to the end of the line": each draw replaces the last
        self._write(start + "\r\x1b[K" + text)
        self._shown = True

    def _end(self) -> None:
        self._what = None
        self._stop.set()
        if self._shown:
            back = f"\x1b[A\r\x1b[{self._below}C" if self._below else ""
            self._write("\r\x1b[K" + back)  # the cursor where pytest left it
            self._shown = False

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode("utf-8", "replace"))
        except OSError:
            self._fd = None  # the terminal went away: stay quiet

    def close(self) -> None:
        with self._lock:
            self._end()
            fd, self._fd = self._fd, None
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(1.0)
        if fd is not None:
            os.close(fd)


def live_line(config: pytest.Config, *, early: bool = False) -> LiveLine:
    """The live line of this pytest process: on a copy of stdout's descriptor when pytest
    writes to a terminal (and is not quiet about it), else one that writes nothing.

    `early`: made in `pytest_load_initial_conftests` for the branch made before the
    conftests (`pytest_cathouse_harness.early`), by the caller's check not an xdist
    worker. The plugin's hook wraps pytest's capturing one there and runs first, so
    stdout is still the terminal; were it captured already, it would be no terminal and
    the line stays off. Only the options parsed so far are known: `-q` is among them."""
    fd: int | None = None
    width = 80
    if early:
        shown = int(getattr(config.known_args_namespace, "verbose", 0) or 0) >= 0
    else:
        shown = getattr(config, "workerinput", None) is None and config.get_verbosity() >= 0
    if shown:
        try:
            out = sys.stdout.fileno()
            if os.isatty(out):
                fd = os.dup(out)
                width = os.get_terminal_size(out).columns or width  # 0: a pty nobody sized
        except (AttributeError, OSError, ValueError):
            fd = None

    def column() -> int:
        try:  # looked up when drawing: the terminal reporter comes after our configure
            return config.get_terminal_writer().width_of_current_line
        except AssertionError:
            return 0

    return LiveLine(fd, width, column=column)


def exit_quickly(config: pytest.Config) -> None:
    """After Ctrl-C: no full garbage collection before this process exits. pytest's stash
    key for the unraisable-exception plugin's passes is meant for overriding (pytester
    does); an unraisable exception raised meanwhile is still reported, what a collection
    would have found in the garbage of an interrupted run is not looked for."""
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # another pytest: its passes stay
        pass
    else:
        config.stash[gc_collect_iterations_key] = 0
    from cathouse_harness.support.interrupt import exit_quickly as interpreter_exits_quickly

    interpreter_exits_quickly()


class QuickInterrupt:
    """Registered with the plugin: cuts a KeyboardInterrupt's traceback to what pytest
    prints of it unless `--full-trace` asks for all of it."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if self._config.option.fulltrace:
            return
        entries: Any = excinfo.traceback
        for index in range(len(entries) - 1, -1, -1):
            if not entries[index].ishidden(excinfo):
                # the line pytest prints (reprcrash) comes from this entry
                excinfo.traceback = entries[index:]
                return
