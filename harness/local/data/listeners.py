"""Endpoints on the data plane: each a set of loopback listeners (direct and pooled on
127.0.0.1's kernel-picked ports, and 5432 on two addresses of its own, direct and
pooled) served by the relay to the branch's own instance (`cathouse_harness.local.data.relay`)."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cathouse_harness.errors import LocalServerError
from cathouse_harness.local.data.hosts import DEFAULT_PORT, loopback_addresses, pooled_seed
from cathouse_harness.local.data.names import HOSTS_VAR, NAME_DOMAIN, HostMode, endpoint_names
from cathouse_harness.local.data.proxy import EndpointProxy
from cathouse_harness.local.data.router import SniRouter
from cathouse_harness.local.data.tls import TlsMaterial
from cathouse_harness.support.log import get_logger

log = get_logger("local.dataplane")


@dataclass(frozen=True)
class EndpointAddress:
    endpoint_id: str
    host: str
    direct_port: int
    pooled_port: int
    pooled_via_pgbouncer: bool
    tls: bool
    # the CA a client verifies the endpoint with (`sslrootcert`); None without TLS
    ca_file: str | None = None
    # the endpoint's own loopback address, listening on 5432 (`cathouse_harness.local.data.hosts`)
    host_address: str | None = None
    # a second one whose 5432 is the pooled listener (`pooler_host`)
    pooled_host_address: str | None = None

    # names mode: (direct, pooled) names the router serves (`cathouse_harness.local.data.names`)
    host_names: tuple[str, str] | None = None

    @property
    def own_hosts(self) -> tuple[str, str] | None:
        """(direct, pooled) hosts of its own on 5432: names through the router, or
        addresses; None where the machine could not bind both addresses (then URLs say
        127.0.0.1 and the ports)."""
        if self.host_names is not None:
            return self.host_names
        if self.host_address and self.pooled_host_address:
            return self.host_address, self.pooled_host_address
        return None


@dataclass
class Listeners:
    """The open endpoints' proxies, by endpoint id."""

    tls: TlsMaterial | None
    # whether pooled listeners log in through the instance's PgBouncer (else they are direct)
    pooled_via_pgbouncer: bool
    # (endpoint id, tls=, on_activity=) -> what serves that endpoint's connections
    make_proxy: Callable[..., EndpointProxy]
    # where cancel requests that name no endpoint (all that come to the router) go
    cancel: Callable[[bytes], Awaitable[None]]
    proxies: dict[str, EndpointProxy] = field(default_factory=dict)
    # why endpoints have no loopback address of their own on 5432, if they have not
    host_problem: str | None = None
    # names mode: the one listener on 5432 for every endpoint (`start_router`)
    router: SniRouter | None = None
    # why endpoints are not named <id>.local.localhost (then a pooled host cannot be
    # made from `host` by inserting `-pooler`: `pooler_host` is the way), if they are not
    names_problem: str | None = None
    # names mode: a branch id's read-write endpoint id (time travel hosts name the branch)
    branch_endpoint: Callable[[str], str | None] = lambda _branch_id: None

    async def start_router(self, mode: HostMode) -> None:
        """In names mode, the router on the mode's address (and [::1] beside 127.0.0.1);
        where it cannot listen (another server holds 5432) endpoints get addresses of
        their own instead, said once."""
        if not mode.names:
            self.names_problem = (
                f"{HOSTS_VAR}=addresses" if mode.addresses_asked
                else "*.localhost names do not resolve on this machine"
            )
            log.info(
                "endpoint hosts are loopback addresses (%s): a pooled host made by inserting"
                " -pooler into host cannot be; pooler_host and connection_uri give the pooled"
                " one", self.names_problem,
            )
            return
        problem = None
        if self.tls is None:
            problem = "endpoints serve no TLS, and the router routes by its server name"
        else:
            router = SniRouter(self.tls, self.proxies.get, self.cancel, self._branch_proxy)
            optional = ("::1",) if mode.router_address == "127.0.0.1" else ()
            try:
                await router.start(mode.router_address, optional=optional)
                self.router = router
                log.info("endpoints are named <id>.%s, routed by %s:%s", NAME_DOMAIN,
                         mode.router_address, DEFAULT_PORT)
                return
            except OSError as exc:
                await router.close()
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                problem = f"cannot listen on {mode.router_address}:{DEFAULT_PORT} ({reason})"
        self.names_problem = problem
        log.warning(
            "endpoint host names (<id>.%s) are not served: %s; endpoints get loopback"
            " addresses of their own instead", NAME_DOMAIN, problem,
        )

    def _branch_proxy(self, branch_id: str) -> EndpointProxy | None:
        endpoint_id = self.branch_endpoint(branch_id)
        return self.proxies.get(endpoint_id) if endpoint_id is not None else None

    async def open(
        self,
        endpoint_id: str,
        *,
        direct_port: int = 0,
        pooled_port: int = 0,
        on_activity: Callable[[], None] | None = None,
    ) -> EndpointAddress:
        """Listeners for an endpoint (`make_proxy` serves their connections)."""
        if endpoint_id in self.proxies:
            await self.close(endpoint_id)
        proxy = self.make_proxy(endpoint_id, tls=self.tls, on_activity=on_activity)
        try:
            direct = await proxy.listen("direct", direct_port)
            pooled = await proxy.listen("pooled", pooled_port)
            host_address = pooled_host_address = None
            if self.router is None:  # names mode needs no addresses: the router serves it
                host_address = await self.listen_on_host(proxy, endpoint_id)
                if host_address:
                    pooled_host_address = await self.listen_on_host(proxy, endpoint_id, pooled=True)
        except OSError as exc:
            await proxy.close()
            raise LocalServerError(
                f"cannot listen for endpoint {endpoint_id}: {exc.strerror or exc}"
            ) from None
        # verify-full checks the dialled address against the certificate's names
        proxy.tls_hosts = tuple(a for a in (host_address, pooled_host_address) if a)
        self.proxies[endpoint_id] = proxy
        return EndpointAddress(
            endpoint_id=endpoint_id,
            host="127.0.0.1",
            direct_port=direct,
            pooled_port=pooled,
            pooled_via_pgbouncer=self.pooled_via_pgbouncer,
            tls=self.tls is not None,
            ca_file=str(self.tls.ca_file) if self.tls is not None else None,
            host_address=host_address,
            pooled_host_address=pooled_host_address,
            host_names=endpoint_names(endpoint_id) if self.router is not None else None,
        )

    async def listen_on_host(
        self, proxy: EndpointProxy, endpoint_id: str, *, pooled: bool = False
    ) -> str | None:
        """The endpoint's own loopback address with a listener on 5432, so a URL built
        from its `host` connects (`pooled`: a second address for its pooled listener,
        answered as `pooler_host`); None (said once) where this machine cannot."""
        problem = ""
        kind = "pooled-host" if pooled else "host"
        for address in loopback_addresses(pooled_seed(endpoint_id) if pooled else endpoint_id):
            try:
                await proxy.listen(kind, DEFAULT_PORT, host=address, exact=True)
                return address
            except OSError as exc:
                # asyncio's strerror repeats the address: the errno's own words are enough
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                problem = f"cannot listen on {address}:{DEFAULT_PORT} ({reason})"
                if exc.errno == errno.EADDRNOTAVAIL:  # no loopback addresses beyond 127.0.0.1
                    break
        if self.host_problem is None:
            self.host_problem = problem
            log.warning(
                "URLs built from an endpoint's host will not connect: %s; endpoints are on"
                " 127.0.0.1 with ports of their own, given in connection_uri",
                problem,
            )
        return None

    def connections(self) -> dict[str, int]:
        """The endpoints with open client connections, and how many (the history asks
        on every connect and leave, so this is a dict walk, no I/O)."""
        return {ep_id: count for ep_id, proxy in self.proxies.items() if (count := proxy.open_connections)}

    def open_connections(self) -> int:
        """Client connections open on any endpoint now."""
        return sum(proxy.open_connections for proxy in self.proxies.values())

    def drop_connections(self, endpoint_id: str) -> None:
        """End the endpoint's client connections; it keeps listening."""
        proxy = self.proxies.get(endpoint_id)
        if proxy is not None:
            proxy.disconnect_all()

    async def close(self, endpoint_id: str) -> None:
        proxy = self.proxies.pop(endpoint_id, None)
        if proxy is not None:
            await proxy.close()

    async def close_all(self) -> None:
        if self.router is not None:
            await self.router.close()
            self.router = None
        for endpoint_id in list(self.proxies):
            await self.close(endpoint_id)
