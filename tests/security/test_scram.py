"""The proxy's SCRAM, message by message: what a client without the password, or one
being downgraded, cannot get past. (asyncpg and psycopg logging in through the proxy,
with and without channel binding, are in test_branch_passwords.py.)"""

from __future__ import annotations

import base64

import pytest
from cathouse_harness.local.data.scram import (
    SCRAM,
    SCRAM_PLUS,
    ClientExchange,
    ScramError,
    ServerExchange,
    Verifier,
    scram_verifier,
)

END_POINT = bytes(range(32))


def _server(password: str = "right", *, end_point: bytes | None = None) -> ServerExchange:
    return ServerExchange(Verifier.parse(scram_verifier(password, iterations=16)), end_point=end_point)


def test_the_right_password_passes_and_the_server_proves_itself() -> None:
    server, client = _server(), ClientExchange("right")
    server_first = server.first(SCRAM, client.first())
    server_final = server.final(client.final(server_first))
    client.check(server_final)  # raises when the server did not know the verifier


def test_a_wrong_password_is_refused() -> None:
    server, client = _server(), ClientExchange("wrong")
    server_first = server.first(SCRAM, client.first())
    with pytest.raises(ScramError, match="wrong password"):
        server.final(client.final(server_first))


def test_a_replayed_proof_does_not_pass_a_new_exchange() -> None:
    first_server, client = _server(), ClientExchange("right")
    final = client.final(first_server.first(SCRAM, client.first()))
    second = _server()
    second.first(SCRAM, client.first())  # a new server nonce
    with pytest.raises(ScramError):
        second.final(final)


def test_plus_is_offered_only_over_tls() -> None:
    assert _server().mechanisms == [SCRAM]
    assert _server(end_point=END_POINT).mechanisms == [SCRAM_PLUS, SCRAM]
    with pytest.raises(ScramError):
        _server().first(SCRAM_PLUS, "p=tls-server-end-point,,n=,r=abc")


def test_a_client_that_could_bind_but_was_told_it_cannot_is_refused() -> None:
    """'y': the client supports binding and believes the server does not; a server that
    offers PLUS then knows someone removed it from the list on the way."""
    with pytest.raises(ScramError, match="refused"):
        _server(end_point=END_POINT).first(SCRAM, "y,,n=,r=abc")


def test_channel_binding_to_another_certificate_is_refused() -> None:
    server = _server(end_point=END_POINT)
    server_first = server.first(SCRAM_PLUS, "p=tls-server-end-point,,n=,r=abc")
    nonce = server_first.split(",")[0][2:]
    other = base64.b64encode(b"p=tls-server-end-point,," + bytes(32)).decode()
    with pytest.raises(ScramError, match="channel binding"):
        server.final(f"c={other},r={nonce},p={base64.b64encode(bytes(32)).decode()}")


@pytest.mark.parametrize("message", ["", "n,,", "n,,r=", "x,,n=,r=abc", "n,,n=,r"])
def test_malformed_first_messages_are_refused(message: str) -> None:
    with pytest.raises(ScramError):
        _server().first(SCRAM, message)
