"""The plugin's side of the connection guard (`cathouse_harness.db.guard`): installed
while the session holds a branch, and a refusal turned into the test's one-line failure.

Called from the places that make or end the session's branch (the branch fixture, or a
hook that makes it before the conftests load) and from the report hook; each call is
cheap and safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from cathouse_harness.db.urls import endpoint_of
from pytest_cathouse_harness.state import HarnessState, state_key

if TYPE_CHECKING:
    from cathouse_harness.branching.lifecycle import BranchHandle
    from cathouse_harness.config.settings import Settings
    from cathouse_harness.db.guard import BranchOnly


def _policy(settings: Settings, found: list[tuple[str, int]], who: Callable[[], str]) -> BranchOnly:
    from cathouse_harness.db.guard import BranchOnly

    return BranchOnly(found, settings.allow_connections, who=who,
                      env_file=settings.project_root / ".env")


def _test_of(state: HarnessState) -> Callable[[], str]:
    return lambda: state.current_test or "outside any test"


# the guard installed before the conftests load, until pytest_configure makes the state
_early_guard = pytest.StashKey["BranchOnly"]()


def guard_before_branch(config: pytest.Config, options: Any) -> None:
    """A project configured for the harness reaches no PostgreSQL but `allow_connections`
    from before its conftests load: a run whose tests ask for no branch fixture, and whose
    app reads a database of its own from `.env`, must be red, not green on that database.
    The branch's endpoints join when it exists (`guard_branch`). A setting that does not
    read is left to pytest_configure, which reports it."""
    from cathouse_harness.db.guard import install
    from cathouse_harness.errors import ConfigError
    from pytest_cathouse_harness.options import read_settings

    try:
        settings = read_settings(config, options)
    except ConfigError:
        return

    def who() -> str:  # the conftests' import, until the state names the test
        state = config.stash.get(state_key, None)
        return _test_of(state)() if state is not None else "while the conftests load"

    config.stash[_early_guard] = _policy(settings, [], who)
    install(config.stash[_early_guard])


def adopt_early_guard(config: pytest.Config, state: HarnessState) -> None:
    """The state takes over the guard installed before the conftests, and its refusals."""
    policy = config.stash.get(_early_guard, None)
    if policy is None:
        return
    del config.stash[_early_guard]
    if state.guard is not None:  # a branch made before the conftests has its own
        from cathouse_harness.db.guard import uninstall

        uninstall(policy)
        return
    state.guard, state.guard_waits = policy, True


def suspend_for_setup(state: HarnessState) -> None:
    """The session's own setup (its migrations' connection to the template, a worker's
    copy) runs unguarded: the guard is for what tests and the app reach."""
    from cathouse_harness.db.guard import uninstall

    if state.guard is not None and state.guard_waits:
        uninstall(state.guard)


def guard_branch(state: HarnessState, settings: Settings, handle: BranchHandle | None) -> None:
    """From now until `unguard`, connections reach this branch (its direct and pooled
    endpoints, any database on them) and `allow_connections`, nothing else. Once per
    session: whatever makes the branch first calls it."""
    from cathouse_harness.db.guard import install

    if handle is None:
        return
    if state.guard is not None and state.guard_waits:
        # the guard since the conftests, with what it refused so far: now with the branch
        for endpoint in endpoints(handle):
            state.guard.add_endpoint(endpoint)
        state.guard_waits = False
        install(state.guard)
        return
    if state.guard is not None:
        return
    state.guard = _policy(settings, endpoints(handle), _test_of(state))
    install(state.guard)


def unguard(state: HarnessState) -> None:
    guard, state.guard = state.guard, None
    if guard is not None:
        from cathouse_harness.db.guard import uninstall

        uninstall(guard)


@contextmanager
def also_allowed(state: HarnessState, handle: BranchHandle) -> Iterator[None]:
    """A branch a test gets of its own is reachable while it lives."""
    guard, found = state.guard, endpoints(handle)
    for endpoint in found if guard is not None else ():
        guard.add_endpoint(endpoint)  # type: ignore[union-attr]
    try:
        yield
    finally:
        for endpoint in found if guard is not None else ():
            guard.remove_endpoint(endpoint)  # type: ignore[union-attr]


def endpoints(handle: BranchHandle) -> list[tuple[str, int]]:
    found = []
    for url in (str(handle.direct_url), str(handle.pooled_url)):
        endpoint = endpoint_of(url)
        found.append((endpoint.host, endpoint.port))
    return found


def fail_on_refusal(state: HarnessState | None, report: pytest.TestReport) -> None:
    """A test phase that met a refusal fails with the refusal's one line, not the driver's
    traceback around it, whatever the test did with the error (caught it, skipped,
    xfail): a silently green run is what the guard exists against."""
    if state is None or state.guard is None:
        return
    refusals = state.guard.take_refusals()
    if not refusals:
        return
    more = f" (and {len(refusals) - 1} more refused)" if len(refusals) > 1 else ""
    report.outcome = "failed"
    report.longrepr = f"{refusals[0]}{more}"
    if hasattr(report, "wasxfail"):
        del report.wasxfail
