"""The check that a branch's URLs name that branch's own endpoint.

This is what stops a session from being handed the parent's, or another endpoint's, URLs
by a confused API answer: tests would then write there.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cathouse_harness.errors import SafetyError
from cathouse_harness.support.loopback import DEFAULT_PORT, loopback_addresses, pooled_seed

# the local server's endpoints without addresses of their own: URLs on these hosts are
# told apart only by their (kernel-picked) ports
_SHARED_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def verify_urls_point_at(
    *,
    endpoint_host: str | None,
    direct: str,
    pooled: str,
    endpoint_id: str | None = None,
) -> None:
    """The direct URL must name the endpoint's host and the pooled URL the endpoint's
    pooled host, each on 5432 (said or left out).

    The pooled host is Neon's rule, the endpoint host with `-pooler` after the endpoint
    id; or, for an endpoint whose host is one of the local server's addresses for that
    id, one of its pooled addresses (`cathouse_harness.support.loopback`). An
    endpoint on the local server's shared 127.0.0.1 (a machine where it cannot bind
    addresses of its own) names no ports: its URLs must be loopback, carry a port each,
    and differ — the one case where another endpoint's URLs could pass.
    """
    if not endpoint_host:
        raise SafetyError("the endpoint has no host to check the URLs against")
    direct_parts, pooled_parts = urlsplit(direct), urlsplit(pooled)
    if endpoint_host.lower() in _SHARED_LOOPBACK:
        for what, parts in (("direct", direct_parts), ("pooled", pooled_parts)):
            if not _is_loopback(parts.hostname or "") or parts.port is None:
                raise SafetyError(
                    f"the {what} URL's host {parts.hostname or '(none)'} is not the endpoint's "
                    f"{endpoint_host} with a port of its own"
                )
    else:
        neon_pooled = _pooled_host(endpoint_host, endpoint_id)
        pooled_hosts = (neon_pooled,) if neon_pooled else _local_pooled(endpoint_host, endpoint_id)
        if not pooled_hosts:
            raise SafetyError(f"cannot tell the pooled host of endpoint {endpoint_id or endpoint_host}")
        _check_address("direct", direct_parts.hostname, direct_parts.port, (endpoint_host,))
        _check_address("pooled", pooled_parts.hostname, pooled_parts.port, pooled_hosts)
    if (direct_parts.hostname, direct_parts.port) == (pooled_parts.hostname, pooled_parts.port):
        raise SafetyError("the pooled URL is the same address as the direct one")


def _pooled_host(endpoint_host: str, endpoint_id: str | None) -> str | None:
    """Neon's pooled host: `-pooler` inserted after the endpoint id that starts the host."""
    if endpoint_id and endpoint_host.startswith(endpoint_id + "."):
        return endpoint_id + "-pooler" + endpoint_host[len(endpoint_id):]
    return None


def _local_pooled(endpoint_host: str, endpoint_id: str | None) -> tuple[str, ...]:
    """The local server's pooled addresses for an endpoint whose host is one of the
    addresses it derives from the endpoint's id (each the first free of its list)."""
    if not endpoint_id or endpoint_host not in loopback_addresses(endpoint_id):
        return ()
    return tuple(loopback_addresses(pooled_seed(endpoint_id)))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def _check_address(what: str, host: str | None, port: int | None, want: tuple[str, ...]) -> None:
    host = (host or "").lower()
    if host not in {w.lower() for w in want}:
        raise SafetyError(f"the {what} URL's host {host or '(none)'} is not the endpoint's {want[0]}")
    if port not in (None, DEFAULT_PORT):
        raise SafetyError(f"the {what} URL's port {port} is not the endpoint's {DEFAULT_PORT}")
