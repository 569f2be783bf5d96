"""Fixtures of the Cat House suite. The database comes from cathouse-harness's plugin
(`pytest -p cathouse_harness`): every session runs on its own migrated branch.

Each service keeps its code in a package called `app`, as in the real repositories; the
suite imports each one under its own name so the four can live in one test process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("auth-service", "catalog-service", "installation-service", "proxy-service")


def load_service(service: str) -> ModuleType:
    """`<service>/app` imported as the package `<service_with_underscores>`; returns its main."""
    package = service.replace("-", "_")
    if package not in sys.modules:
        app_dir = ROOT / service / "app"
        spec = importlib.util.spec_from_file_location(
            package, app_dir / "__init__.py", submodule_search_locations=[str(app_dir)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.main")


@pytest.fixture
async def service_client(database_url: str) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """`service_client("auth-service")`: an httpx client talking to that service's ASGI app
    in process. `database_url` makes sure DATABASE_URL names this session's branch first."""
    clients: dict[str, httpx.AsyncClient] = {}

    def client(service: str) -> httpx.AsyncClient:
        if service not in clients:
            main = load_service(service)
            transport = httpx.ASGITransport(app=main.app)
            clients[service] = httpx.AsyncClient(transport=transport, base_url=f"http://{service}")
        return clients[service]

    yield client
    for service, http in clients.items():
        await http.aclose()
        # engines are cached per process; asyncpg connections belong to this test's loop
        await importlib.import_module(f"{service.replace('-', '_')}.db").dispose()
