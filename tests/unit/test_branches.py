"""The safety gate and the URL check: pure functions, so every refusal is pinned here."""

from __future__ import annotations

import pytest
from cathouse_harness.branching import endpoint_check as endpoint_urls
from cathouse_harness.branching import lifecycle as branches
from cathouse_harness.branching import names as branch_names
from cathouse_harness.errors import SafetyError
from cathouse_harness.local.data.hosts import loopback_addresses, pooled_seed
from cathouse_harness.neon.models import Branch


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

# the local server's endpoint without addresses of its own: 127.0.0.1, ports in the URLs
SHARED = {"endpoint_host": "127.0.0.1", "endpoint_id": "ep-a-1", "direct": DIRECT, "pooled": POOLED}
# with them: `host` and the pooled address both derived from the endpoint id, on 5432
OWN, OWN_POOLED = next(loopback_addresses("ep-a-1")), next(loopback_addresses(pooled_seed("ep-a-1")))
OTHER_POOLED = next(loopback_addresses(pooled_seed("ep-b-2")))
LOCAL = {
    "endpoint_host": OWN,
    "endpoint_id": "ep-a-1",
    "direct": f"postgresql://u:p@{OWN}/cathouse?sslmode=verify-full",
    "pooled": f"postgresql://u:p@{OWN_POOLED}/cathouse?sslmode=verify-full",
}
NEON = {
    "endpoint_host": "ep-a-1.eu.aws.neon.tech",
    "endpoint_id": "ep-a-1",
    "direct": "postgresql://u:p@ep-a-1.eu.aws.neon.tech/db",
    "pooled": "postgresql://u:p@ep-a-1-pooler.eu.aws.neon.tech/db",
}


def test_urls_pointing_at_the_endpoint_pass() -> None:
    endpoint_urls.verify_urls_point_at(**LOCAL)  # type: ignore[arg-type]
    endpoint_urls.verify_urls_point_at(**NEON)  # type: ignore[arg-type]
    endpoint_urls.verify_urls_point_at(**SHARED)  # type: ignore[arg-type]
    # 5432 said out loud is the same address
    endpoint_urls.verify_urls_point_at(  # type: ignore[arg-type]
        **{**LOCAL, "pooled": f"postgresql://u:p@{OWN_POOLED}:5432/cathouse"}
    )
    # the pooled address may be a later candidate (the first was taken)
    later = list(loopback_addresses(pooled_seed("ep-a-1")))[2]
    endpoint_urls.verify_urls_point_at(**{**LOCAL, "pooled": f"postgresql://u:p@{later}/cathouse"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "kwargs", "reason"),
    [
        # another endpoint's pooled address, or the right address on another port
        (LOCAL, {"pooled": f"postgresql://u:p@{OTHER_POOLED}/c"}, "pooled URL's host"),
        (LOCAL, {"pooled": f"postgresql://u:p@{OWN_POOLED}:6002/c"}, "port 6002 is not the endpoint's 5432"),
        (LOCAL, {"direct": DIRECT}, "direct URL's host 127.0.0.1"),
        (LOCAL, {"pooled": LOCAL["direct"]}, "pooled URL's host"),
        # an address the endpoint id does not derive: no way to tell its pooled address
        ({**LOCAL, "endpoint_host": "127.9.9.9"}, {}, "cannot tell the pooled host"),
        (LOCAL, {"endpoint_host": "ep-parent.neon.tech"}, "cannot tell the pooled host"),
        (SHARED, {"pooled": DIRECT}, "same address"),
        (SHARED, {"pooled": "postgresql://u:p@127.0.0.1/cathouse"}, "with a port of its own"),
        (SHARED, {"direct": "postgresql://u:p@db.example.com:6001/cathouse"}, "direct URL's host db.example"),
        (NEON, {"pooled": "postgresql://u:p@ep-b-2-pooler.eu.aws.neon.tech/db"}, "ep-b-2-pooler"),
        (NEON, {"endpoint_id": None}, "cannot tell the pooled host"),
        ({**NEON, "endpoint_host": "ep-a-1.localhost"}, {}, "direct URL's host ep-a-1.eu"),
    ],
)
def test_urls_pointing_elsewhere_are_refused(
    base: dict[str, object], kwargs: dict[str, object], reason: str
) -> None:
    with pytest.raises(SafetyError, match=reason):
        endpoint_urls.verify_urls_point_at(**{**base, **kwargs})  # type: ignore[arg-type]
