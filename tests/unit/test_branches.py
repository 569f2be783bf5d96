"""The safety gate and the URL check: pure functions, so every refusal is pinned here."""

from __future__ import annotations

import pytest

from harness import branch_names, branches, endpoint_urls
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
    assert branch_names.session_branch_name("abc", "gw1") == "harness/abc/gw1"
    assert branch_names.template_branch_name("f00d", "main") == "harness/template/main/f00d"
    assert branch_names.building_name("harness/template/main/f00d").endswith(".building")
    dev = branch_names.dev_branch_name("ann", "feat/login page")
    assert dev.startswith("harness/dev/ann-feat/login-page")


DIRECT = "postgresql://u:p@127.0.0.1:6001/cathouse"
POOLED = "postgresql://u:p@127.0.0.1:6002/cathouse"


LOCAL = {"endpoint_host": "127.0.0.1", "pooler_host": "127.0.0.1", "direct": DIRECT, "pooled": POOLED}
NEON = {
    "endpoint_host": "ep-a-1.eu.aws.neon.tech",
    "endpoint_id": "ep-a-1",
    "direct": "postgresql://u:p@ep-a-1.eu.aws.neon.tech/db",
    "pooled": "postgresql://u:p@ep-a-1-pooler.eu.aws.neon.tech/db",
}


def test_urls_pointing_at_the_endpoint_pass() -> None:
    endpoint_urls.verify_urls_point_at(**LOCAL, endpoint_port=6001, pooler_port=6002)  # type: ignore[arg-type]
    endpoint_urls.verify_urls_point_at(**NEON)  # type: ignore[arg-type]
    # the local server names no pooler host (not a Neon field): loopback, told by port
    endpoint_urls.verify_urls_point_at(
        endpoint_host="127.0.0.1", endpoint_id="ep-a-1", direct=DIRECT, pooled=POOLED,
        endpoint_port=6001, pooler_port=6002,
    )
    # the local server with resolvable *.localhost names: loopback URLs on the endpoint's ports
    endpoint_urls.verify_urls_point_at(
        endpoint_host="ep-a-1.localhost", endpoint_id="ep-a-1", direct=DIRECT, pooled=POOLED,
        endpoint_port=6001, pooler_port=6002,
    )


@pytest.mark.parametrize(
    ("base", "kwargs", "reason"),
    [
        (LOCAL, {"endpoint_port": 7001}, "port 6001 is not the endpoint's 7001"),
        (LOCAL, {"pooler_port": 7002}, "pooled URL's port 6002"),
        (LOCAL, {"endpoint_host": "ep-parent.neon.tech"}, "not the endpoint's ep-parent"),
        (LOCAL, {"pooled": DIRECT}, "same address"),
        (NEON, {"pooled": "postgresql://u:p@ep-b-2-pooler.eu.aws.neon.tech/db"}, "ep-b-2-pooler"),
        (NEON, {"endpoint_id": None}, "cannot tell the pooled host"),
        # loopback without a pooler host: only the pooler port tells the pooled listener
        ({**LOCAL, "pooler_host": None}, {"pooler_port": 6003}, "pooled URL's port 6002"),
        ({**LOCAL, "pooler_host": None}, {}, "cannot tell the pooled host"),
        # a .localhost endpoint no longer waives the host check, and needs its ports
        ({**NEON, "endpoint_host": "ep-a-1.localhost"}, {}, "direct URL's host ep-a-1.eu"),
        ({**LOCAL, "endpoint_host": "ep-a-1.localhost", "endpoint_id": "ep-a-1"}, {}, "direct URL's host"),
    ],
)
def test_urls_pointing_elsewhere_are_refused(
    base: dict[str, object], kwargs: dict[str, object], reason: str
) -> None:
    with pytest.raises(SafetyError, match=reason):
        endpoint_urls.verify_urls_point_at(**{**base, **kwargs})  # type: ignore[arg-type]
