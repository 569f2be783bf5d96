"""The pytest plugin of cathouse-harness: options, fixtures and hooks over
`cathouse_harness` (imported as `pytest_cathouse_harness`, from the folder `conftest_plugin/`).

Registered as the pytest11 entry point `cathouse_harness`, so `pytest -p cathouse_harness`
loads it by name. It stays inert (no server, no API call) until a test asks for one of
its fixtures.
"""

import sys


def _leave_our_asserts_alone() -> None:
    """Take the engine and the plugin off pytest's list of modules to assert-rewrite.

    pytest rewrites every module of a distribution that has a pytest11 entry point, and
    keeps the rewritten bytecode in files of its own, which it cannot write under
    PYTHONDONTWRITEBYTECODE or into a read-only install (some CI images, this project's
    machines): then each pytest process parses and compiles every harness module it
    imports again, ordinary .pyc files or not. Our asserts guard invariants, not tests,
    and need no rewriting. Runs here, before the plugin imports anything of `cathouse_harness`;
    a pytest without these attributes goes on rewriting, which only costs time.
    """
    for finder in sys.meta_path:
        if type(finder).__name__ != "AssertionRewritingHook":
            continue
        marked = getattr(finder, "_must_rewrite", None)
        cache = getattr(finder, "_marked_for_rewrite_cache", None)
        if isinstance(marked, set):
            marked.difference_update({"cathouse_harness", "pytest_cathouse_harness"})
        if isinstance(cache, dict):
            cache.clear()


_leave_our_asserts_alone()
