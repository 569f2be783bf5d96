"""Every service's `/health/db`, through httpx's ASGI transport, against the session branch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import SERVICES, load_service


@pytest.mark.parametrize("service", SERVICES)
async def test_health_db_is_healthy(service: str, service_client: Callable[[str], httpx.AsyncClient]) -> None:
    response = await service_client(service).get("/health/db")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


@pytest.mark.parametrize("service", SERVICES)
async def test_unhealthy_answer_leaks_neither_url_nor_password(
    service: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = urlsplit(database_url)
    wrong_password = "wrong-pass-Zq81"
    bad_url = database_url.replace(f":{parts.password}@", f":{wrong_password}@")
    assert bad_url != database_url
    monkeypatch.setenv("DATABASE_URL", bad_url)
    main = load_service(service)
    db = importlib.import_module(f"{service.replace('-', '_')}.db")
    await db.dispose()
    try:
        transport = httpx.ASGITransport(app=main.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/health/db")
    finally:
        await db.dispose()
    assert response.status_code == 503
    body = response.text
    assert response.json()["status"] == "unhealthy"
    for secret in (wrong_password, parts.hostname or "", str(parts.port), bad_url):
        assert secret not in body
