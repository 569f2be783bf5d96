"""The safety gate and the URL check: pure functions, so every refusal is pinned here."""

from __future__ import annotations

import pytest

from harness import branches
from harness.errors import SafetyError
from harness.neon.models import Branch


def branch(name: str, *, default: bool = False, protected: bool = False, marked: bool = True) -> Branch:
    annotation = branches.marks("session", "run1") if marked else {}
    return Branch(
        id="br-x", name=name, project_id="p", default=default, protected=protected, annotation=annotation
    )


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (branch("main", default=True), "default branch"),
        (branch("harness/run1/main", protected=True), "protected"),
        (branch("harness/run1/main", marked=False), "did not create it"),
        (branch("feature/x"), "did not create it"),
    ],
)
def test_ensure_owned_refuses(candidate: Branch, reason: str) -> None:
    with pytest.raises(SafetyError, match=reason):
        branches.ensure_owned(candidate, "delete")
    assert not branches.is_harness_branch(candidate)


def test_ensure_owned_accepts_a_marked_harness_branch() -> None:
    ours = branch("harness/run1/main")
    branches.ensure_owned(ours, "delete")
    assert branches.is_harness_branch(ours)


def test_names() -> None:
    assert branches.session_branch_name("abc", "gw1") == "harness/abc/gw1"
    assert branches.template_branch_name("f00d", "main") == "harness/template/main/f00d"
    assert branches.building_name("harness/template/main/f00d").endswith(".building")
    assert branches.dev_branch_name("ann", "feat/login page").startswith("harness/dev/ann-feat/login-page")


DIRECT = "postgresql://u:p@127.0.0.1:6001/cathouse"
POOLED = "postgresql://u:p@127.0.0.1:6002/cathouse"


def test_urls_pointing_at_the_endpoint_pass() -> None:
    branches.verify_urls_point_at(
        endpoint_host="127.0.0.1", direct=DIRECT, pooled=POOLED, endpoint_port=6001, pooler_port=6002
    )
    branches.verify_urls_point_at(
        endpoint_host="ep-a-1.eu.aws.neon.tech",
        direct="postgresql://u:p@ep-a-1.eu.aws.neon.tech/db",
        pooled="postgresql://u:p@ep-a-1-pooler.eu.aws.neon.tech/db",
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"endpoint_port": 7001}, "port 6001 is not the endpoint's 7001"),
        ({"pooler_port": 7002}, "pooled URL's port 6002"),
        ({"endpoint_host": "ep-parent.neon.tech"}, "not the endpoint's ep-parent"),
        ({"pooled": DIRECT}, "same address"),
    ],
)
def test_urls_pointing_elsewhere_are_refused(kwargs: dict[str, object], reason: str) -> None:
    arguments: dict[str, object] = {"endpoint_host": "127.0.0.1", "direct": DIRECT, "pooled": POOLED}
    arguments.update(kwargs)
    with pytest.raises(SafetyError, match=reason):
        branches.verify_urls_point_at(**arguments)  # type: ignore[arg-type]
