"""cathouse_harness.migrate.run_memo: one read per key inside a run, a fresh read outside any run."""

from __future__ import annotations

from cathouse_harness.migrate.run_memo import once_per_run, remembered


def test_outside_a_run_every_call_computes() -> None:
    calls: list[int] = []
    for _ in range(3):
        remembered("k", lambda: calls.append(1) or len(calls))
    assert len(calls) == 3


def test_inside_a_run_once_per_key_and_nothing_kept_after() -> None:
    calls: list[str] = []

    def read(key: str) -> str:
        calls.append(key)
        return key.upper()

    with once_per_run():
        assert [remembered(k, lambda k=k: read(k)) for k in "aab"] == ["A", "A", "B"]
        with once_per_run():  # a nested run shares the outer one's memo
            assert remembered("a", lambda: read("a")) == "A"
    assert calls == ["a", "b"]
    remembered("a", lambda: read("a"))
    assert calls == ["a", "b", "a"]


def test_a_failed_read_is_not_kept() -> None:
    attempts: list[int] = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("file being written")
        return 7

    with once_per_run():
        try:
            remembered("x", flaky)
        except OSError:
            pass
        assert remembered("x", flaky) == 7
    assert len(attempts) == 2
