"""Names mode: endpoint hosts shaped as Neon's, `<endpoint-id>.local.localhost`.

Neon's endpoint host is `<endpoint-id>.<region>.<domain>`, and clients build the pooled
host by inserting `-pooler` after the endpoint id; its proxy routes one port by the TLS
server name (SNI). Where `*.localhost` resolves to loopback (systemd's nss-myhostname or
resolved; not with nsswitch `files dns` alone), names of that shape reach this machine,
so one router on 127.0.0.1:5432 (`cathouse_harness.local.data.router`) serves every endpoint, direct
and pooled, by the name the client dialled, and a URL built from `host` by Neon's rule
reaches PgBouncer. The middle label keeps two labels after the certificate's wildcard
(`*.local.localhost`), which OpenSSL requires of a wildcard.

`CATHOUSE_LOCAL_HOSTS` chooses: `auto` (names where they resolve, else addresses of
each endpoint's own, `cathouse_harness.local.data.hosts`), `addresses`, or `names` (forced: tests, and
clients that dial the router with libpq's `hostaddr`). `CATHOUSE_LOCAL_ROUTER` puts the
router on another loopback address (parallel servers, tests).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from cathouse_harness.errors import ConfigError
from cathouse_harness.support import env

NAME_DOMAIN = "local.localhost"
WILDCARD = f"*.{NAME_DOMAIN}"
POOLER_SUFFIX = "-pooler"
HOSTS_VAR = "CATHOUSE_LOCAL_HOSTS"
ROUTER_VAR = "CATHOUSE_LOCAL_ROUTER"
_MODES = ("auto", "addresses", "names")


@dataclass(frozen=True)
class HostMode:
    """How endpoints are reached: by names through one router, or by addresses."""

    names: bool
    router_address: str = "127.0.0.1"
    # addresses were asked for by the setting (names may resolve)
    addresses_asked: bool = False


def endpoint_names(endpoint_id: str) -> tuple[str, str]:
    """The endpoint's direct and pooled host names."""
    return f"{endpoint_id}.{NAME_DOMAIN}", f"{endpoint_id}{POOLER_SUFFIX}.{NAME_DOMAIN}"


def route_of(server_name: str | None) -> tuple[str, bool] | None:
    """(endpoint id, pooled) named by a TLS server name; None for any other name."""
    if not server_name:
        return None
    label, _, domain = server_name.lower().partition(".")
    if domain != NAME_DOMAIN or not label:
        return None
    if label.endswith(POOLER_SUFFIX):
        return label.removesuffix(POOLER_SUFFIX), True
    return label, False


def names_resolve() -> bool:
    """True when a name of our shape resolves, and only to loopback."""
    try:
        infos = socket.getaddrinfo(f"ep-probe.{NAME_DOMAIN}", None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def host_mode(resolve: Callable[[], bool] = names_resolve) -> HostMode:
    """The mode the settings ask for (`auto` asks `resolve`); ConfigError on a bad value."""
    mode = (env.read(HOSTS_VAR) or "auto").strip().lower()
    if mode not in _MODES:
        raise ConfigError(
            f"'{mode}' is not one of {', '.join(_MODES)}", key=HOSTS_VAR, source="environment"
        )
    router = (env.read(ROUTER_VAR) or "127.0.0.1").strip()
    try:
        loopback = ipaddress.ip_address(router).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"'{router}' is not a loopback address", key=ROUTER_VAR, source="environment",
            hint="give an address in 127.0.0.0/8 or ::1",
        )
    if mode == "names":
        return HostMode(names=True, router_address=router)
    if mode == "addresses":
        return HostMode(names=False, router_address=router, addresses_asked=True)
    return HostMode(names=resolve(), router_address=router)
