"""#15 part 1, Neon's route for clients without SNI: `options=endpoint%3D<endpoint-id>`.

libpq (psycopg) sends the option in the startup packet; the endpoint's listener checks
it names its own endpoint (`<id>` or `<id>-pooler`), refuses another in one FATAL line,
and removes the word before PostgreSQL, which would refuse it, sees the startup.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import psycopg
import pytest
from cathouse_harness.local.data.startup_options import (
    EndpointOptionError,
    split_options,
    take_endpoint_option,
)

from tests.local._server import connection_uri, create_ready_branch, delete_branch, unique


def _with_options(url: str, options: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options={quote(options, safe='')}"


def _one(url: str, statement: str) -> str:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return str(row[0])


def test_the_endpoint_option_reaches_its_endpoint_and_not_postgresql(
    client: httpx.Client, project: str
) -> None:
    made = create_ready_branch(client, project, name=unique("ep-option"))
    try:
        branch_id = made["branch"]["id"]
        [endpoint] = made["endpoints"]
        ep = endpoint["id"]
        direct = connection_uri(client, project, branch_id, pooled=False)
        pooled = connection_uri(client, project, branch_id, pooled=True)
        # PostgreSQL reads `options` as its command line: the other words still reach it
        url = _with_options(direct, f"-c search_path=opt_schema endpoint={ep}")
        assert _one(url, "SHOW search_path") == "opt_schema"
        assert _one(_with_options(direct, f"project={ep}"), "SELECT 1") == "1"
        # `-pooler` (a pooled host's first label) is accepted; the address decides the path
        assert _one(_with_options(pooled, f"endpoint={ep}-pooler"), "SELECT 1") == "1"
        assert _one(_with_options(direct, f"endpoint={ep}-pooler"), "SELECT 1") == "1"
        with pytest.raises(psycopg.OperationalError) as refused:
            _one(_with_options(direct, "endpoint=ep-someone-else-12345678"), "SELECT 1")
        message = str(refused.value)
        assert f"this address serves endpoint '{ep}'" in message, message
        assert "ep-someone-else-12345678" in message
        assert "invalid command-line argument" not in message
    finally:
        delete_branch(client, project, made["branch"]["id"])


def test_options_split_as_postgresql_splits_them() -> None:
    assert split_options(r"-c  search_path=a\ b endpoint=ep-1 -c x=\\y") == [
        "-c", "search_path=a b", "endpoint=ep-1", "-c", r"x=\y",
    ]
    taken = take_endpoint_option({"user": "u", "options": r"-c search_path=a\ b endpoint=ep-1"}, "ep-1")
    assert taken == {"user": "u", "options": r"-c search_path=a\ b"}
    assert take_endpoint_option({"user": "u", "options": "endpoint=ep-1"}, "ep-1") == {"user": "u"}
    assert take_endpoint_option({"user": "u", "options": "-c a=b"}, "ep-1")["options"] == "-c a=b"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("endpoint=ep-2", "serves endpoint 'ep-1'"),
        ("endpoint=ep-1 project=ep-1", "more than one endpoint"),
        ("endpoint=ep_1;drop", "only letters, digits and hyphens"),
    ],
)
def test_an_endpoint_option_that_cannot_be_honoured_is_refused(options: str, reason: str) -> None:
    with pytest.raises(EndpointOptionError, match=reason):
        take_endpoint_option({"user": "u", "options": options}, "ep-1")
