"""Which Neon the harness talks to: the real one, or the embedded default.

Both are reached through the same `NeonClient`; the embedded default is only a local
server that speaks the same API, so every code path above this module is the one that
runs against Neon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cathouse_harness.config.settings import Settings
from cathouse_harness.errors import LocalServerError
from cathouse_harness.support.redact import Secret

if TYPE_CHECKING:
    from cathouse_harness.neon.client import NeonClient


@dataclass(frozen=True)
class BackendInfo:
    kind: Literal["neon", "embedded"]
    api_host: str
    api_key: Secret
    project_id: str
    # what the pooled endpoints cannot carry as Neon's pooler does ("PgBouncer 1.18 in
    # transaction mode": no named prepared statements); None where nothing is known amiss
    pooler_gap: str | None = None

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
    from cathouse_harness.local.discovery import live_server, resolve_home, restart_hint

    # Reusing a running server needs only the light discovery module; the
    # launcher loads only when one has to be started.
    info = live_server(resolve_home(settings.home), settings.local_storage)
    if info is None:
        from cathouse_harness.local.launch import ensure_local_server

        info = ensure_local_server(
            settings.home, storage=settings.local_storage, postgres_bin=settings.postgres_bin,
            database=settings.database, role=settings.role, pooler_mode=settings.pooler_mode,
        )
    _check_names(settings, info.databases, info.roles)
    if settings.postgres_bin is not None:
        from cathouse_harness.local.pg_choice import check_serves

        check_serves(settings.postgres_bin, info.postgres_bin, info.postgres_origin, info.pid)
    pooler = info.pooler
    if settings.pooler_mode is not None and pooler is not None and pooler.mode != settings.pooler_mode:
        raise LocalServerError(
            f"{settings.source_of('pooler_mode')} sets pooler_mode = {settings.pooler_mode!r} but "
            f"this home's local server (pid {info.pid}) pools in {pooler.mode} mode",
            hint=restart_hint(info.pid),
        )
    return BackendInfo(
        "embedded", info.api_host, Secret(str(info.api_key)), info.project_id,
        pooler.gap if pooler is not None else None,
    )


def _check_names(
    settings: Settings, databases: tuple[str, ...] | None, roles: tuple[str, ...] | None
) -> None:
    """The local project is made once per home, with the names of the client that
    started its server first; a later client configuring others would find no such
    database on any branch. Say so now, in one line, rather than at the first branch."""
    from cathouse_harness.errors import ConfigError

    for key, have in (("database", databases), ("role", roles)):
        wanted = getattr(settings, key)
        if have is None or wanted in have:
            continue
        listed = ", ".join(have) or "none"
        raise ConfigError(
            f"{wanted!r} is not in the embedded default's project in {settings.home} "
            f"(its {key}s: {listed})",
            key=key,
            source=settings.source_of(key),
            hint=f"configure one of those, or use another CATHOUSE_HARNESS_HOME for a project "
            f"made with {key} {wanted!r}",
        )


def open_client(backend: BackendInfo, **kwargs: Any) -> NeonClient:
    from cathouse_harness.neon.client import NeonClient, TransportOptions

    return NeonClient(str(backend.api_key), TransportOptions(api_host=backend.api_host, **kwargs))
