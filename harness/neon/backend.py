"""Which Neon the harness talks to: the real one, or the embedded default.

Both are reached through the same `NeonClient`; the embedded default is only a local
server that speaks the same API, so every code path above this module is the one that
runs against Neon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cathouse_harness.config.settings import Settings
from cathouse_harness.support.redact import Secret

if TYPE_CHECKING:
    from cathouse_harness.neon.client import NeonClient


@dataclass(frozen=True)
class BackendInfo:
    kind: Literal["neon", "embedded"]
    api_host: str
    api_key: Secret
    project_id: str

    def __repr__(self) -> str:
        return (
            f"BackendInfo(kind={self.kind!r}, api_host={self.api_host!r}, "
            f"project_id={self.project_id!r})"
        )

    @property
    def label(self) -> str:
        return "Neon" if self.kind == "neon" else "embedded default (local Neon API)"


def connect_backend(settings: Settings) -> BackendInfo:
    """Resolve the API to use; starts (or reuses) the local server for the embedded default."""
    if settings.backend == "neon":
        assert settings.api_key is not None and settings.project_id is not None
        return BackendInfo("neon", settings.api_host, settings.api_key, settings.project_id)
    from cathouse_harness.local.discovery import live_server, resolve_home

    # Reusing a running server needs only the light discovery module; the
    # launcher loads only when one has to be started.
    info = live_server(resolve_home(settings.home), settings.local_storage)
    if info is None:
        from cathouse_harness.local.launch import ensure_local_server

        info = ensure_local_server(
            settings.home, storage=settings.local_storage, postgres_bin=settings.postgres_bin
        )
    if settings.postgres_bin is not None:
        from cathouse_harness.local.pg_choice import check_serves

        check_serves(settings.postgres_bin, info.postgres_bin, info.postgres_origin, info.pid)
    return BackendInfo("embedded", info.api_host, Secret(str(info.api_key)), info.project_id)


def open_client(backend: BackendInfo, **kwargs: Any) -> NeonClient:
    from cathouse_harness.neon.client import NeonClient, TransportOptions

    return NeonClient(str(backend.api_key), TransportOptions(api_host=backend.api_host, **kwargs))
