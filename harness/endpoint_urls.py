"""The check that a branch's URLs name that branch's own endpoint.

This is what stops a session from being handed the parent's, or another endpoint's, URLs
by a confused API answer: tests would then write there.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harness.errors import SafetyError

if TYPE_CHECKING:
    from harness.neon.models import Endpoint


def endpoint_facts(endpoint: Endpoint) -> dict[str, Any]:
    """What an endpoint object says about its addresses, for `verify_urls_point_at`."""
    pooler_host = endpoint.raw.get("pooler_host")
    return {
        "endpoint_id": endpoint.id,
        "pooler_host": pooler_host if isinstance(pooler_host, str) else None,
        "endpoint_port": opt_port(endpoint.raw.get("port")),
        "pooler_port": opt_port(endpoint.raw.get("pooler_port")),
    }


def opt_port(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def verify_urls_point_at(
    *,
    endpoint_host: str | None,
    direct: str,
    pooled: str,
    endpoint_id: str | None = None,
    pooler_host: str | None = None,
    endpoint_port: int | None = None,
    pooler_port: int | None = None,
) -> None:
    """The direct URL must name the endpoint's host and the pooled URL the endpoint's
    pooled host (and each its port, where the backend gives one, as the local server does).

    The pooled host is Neon's rule, the endpoint host with `-pooler` after the endpoint
    id, or else a `pooler_host` the endpoint object names, or for a loopback endpoint
    with a `pooler_port` (the local server's) the same host on that port. A
    loopback URL stands for a `*.localhost` or loopback endpoint host only on the
    endpoint's own port. This is what stops a session from being handed the parent's,
    or another endpoint's, URLs by a confused API answer: tests would then write there.
    """
    if not endpoint_host:
        raise SafetyError("the endpoint has no host to check the URLs against")
    pooled_host = _pooled_host(endpoint_host, endpoint_id) or pooler_host
    if not pooled_host and _is_loopback(endpoint_host) and pooler_port is not None:
        # The local server: both listeners on loopback, told apart by their ports (its
        # endpoints name no pooler host, a field Neon's endpoints do not have).
        pooled_host = endpoint_host
    if not pooled_host:
        raise SafetyError(f"cannot tell the pooled host of endpoint {endpoint_id or endpoint_host}")
    direct_parts, pooled_parts = urlsplit(direct), urlsplit(pooled)
    for what, parts, host, port in (
        ("direct", direct_parts, endpoint_host, endpoint_port),
        ("pooled", pooled_parts, pooled_host, pooler_port),
    ):
        _check_address(what, parts.hostname, parts.port, host, port)
    if (direct_parts.hostname, direct_parts.port) == (pooled_parts.hostname, pooled_parts.port):
        raise SafetyError("the pooled URL is the same address as the direct one")


def _pooled_host(endpoint_host: str, endpoint_id: str | None) -> str | None:
    """Neon's pooled host: `-pooler` inserted after the endpoint id that starts the host."""
    if endpoint_id and endpoint_host.startswith(endpoint_id + "."):
        return endpoint_id + "-pooler" + endpoint_host[len(endpoint_id):]
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def _check_address(what: str, host: str | None, port: int | None, want_host: str,
                   want_port: int | None) -> None:
    host = (host or "").lower()
    want_host = want_host.lower()
    if host == want_host:
        if want_port is not None and port not in (None, want_port):
            raise SafetyError(f"the {what} URL's port {port} is not the endpoint's {want_port}")
        return
    # the local server's URLs say 127.0.0.1 where its endpoint says ep-….localhost;
    # then only the endpoint's own port tells the endpoints apart
    if _is_loopback(host) and _is_loopback(want_host) and want_port is not None:
        if port != want_port:
            raise SafetyError(f"the {what} URL's port {port} is not the endpoint's {want_port}")
        return
    raise SafetyError(f"the {what} URL's host {host or '(none)'} is not the endpoint's {want_host}")
