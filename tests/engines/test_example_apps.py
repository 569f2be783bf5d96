"""The Cat House example's FastAPI apps on a migrated database, through their engines."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from cathouse_harness.config.settings import load_settings
from cathouse_harness.migrate.all_services import migrate_all

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cathouse"
SERVICES = ("auth-service", "catalog-service", "installation-service", "proxy-service")
_loaded: dict[str, tuple[ModuleType, ModuleType]] = {}


def load(service: str) -> tuple[ModuleType, ModuleType]:
    """(main, db) of a service; every service's package is called `app`, so each gets a
    private name here."""
    if service not in _loaded:
        app_dir = EXAMPLE / service / "app"
        package = "_example_" + service.replace("-", "_")
        spec = importlib.util.spec_from_file_location(
            package, app_dir / "__init__.py", submodule_search_locations=[str(app_dir)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
        _loaded[service] = (
            importlib.import_module(f"{package}.main"),
            importlib.import_module(f"{package}.db"),
        )
    return _loaded[service]


def client(service: str) -> httpx.AsyncClient:
    main, _ = load(service)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=main.app), base_url="http://t")


@pytest.fixture
async def database(fresh_database_url, monkeypatch):
    migrate_all(load_settings(EXAMPLE, environ={}), fresh_database_url)
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    yield fresh_database_url
    for service in SERVICES:
        await load(service)[1].dispose()


def test_service_pools_agree_with_pyproject():
    settings = load_settings(EXAMPLE, environ={})
    for service in SERVICES:
        configured = settings.service(service)
        in_code = load(service)[1].SERVICE
        assert (in_code.name, in_code.schema, in_code.pool_size, in_code.max_overflow,
                in_code.read_only) == (configured.name, configured.schema, configured.pool_size,
                                       configured.max_overflow, configured.read_only)


async def test_health_is_healthy(database):
    for service in SERVICES:
        async with client(service) as http:
            answer = await http.get("/health/db")
        assert answer.status_code == 200, service
        assert answer.json() == {"status": "healthy"}


async def test_unhealthy_answer_does_not_leak_the_url(monkeypatch):
    secret = "Sup3r-Secret-Pw"
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://cathouse_owner:{secret}@127.0.0.1:9/cathouse"
    )
    for service in SERVICES:
        _, db = load(service)
        await db.dispose()
        try:
            async with client(service) as http:
                answer = await http.get("/health/db")
        finally:
            await db.dispose()
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unhealthy" and body["error"]
        for leak in (secret, "cathouse_owner", "127.0.0.1", ":9"):
            assert leak not in answer.text


async def test_unconfigured_database_is_unhealthy(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    _, db = load("auth-service")
    await db.dispose()
    async with client("auth-service") as http:
        answer = await http.get("/health/db")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unhealthy", "error": "DatabaseNotConfigured"}


async def test_users_cats_installations_and_the_proxy_overview(database):
    async with client("auth-service") as auth:
        new_user = {"email": "Tom@Example.com", "display_name": "Tom"}
        created = await auth.post("/users", json=new_user)
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["email"] == "tom@example.com" and user["is_active"] is True
        assert (await auth.get(f"/users/{user['id']}")).json() == user
        assert (await auth.post("/users", json={"email": "tom@example.com"})).status_code == 409
        assert (await auth.get(f"/users/{uuid.uuid4()}")).status_code == 404

    async with client("catalog-service") as catalog:
        cat_body = {
            "owner_id": user["id"],
            "name": "Weather Cat",
            "permissions": [{"name": "location"}, {"name": "notifications"}],
        }
        created = await catalog.post("/cats", json=cat_body)
        assert created.status_code == 201, created.text
        cat = created.json()
        assert [p["name"] for p in cat["permissions"]] == ["location", "notifications"]
        assert (await catalog.get(f"/cats/{cat['id']}")).json() == cat
        orphan = {**cat_body, "owner_id": str(uuid.uuid4())}
        assert (await catalog.post("/cats", json=orphan)).status_code == 404
        other = (await catalog.post("/cats", json={**cat_body, "name": "Other"})).json()

    location = next(p["id"] for p in cat["permissions"] if p["name"] == "location")
    async with client("installation-service") as installation:
        body = {"user_id": user["id"], "cat_id": cat["id"], "permission_ids": [location]}
        created = await installation.post("/installations", json=body)
        assert created.status_code == 201, created.text
        installed = created.json()
        assert installed["permission_ids"] == [location]
        assert (await installation.get(f"/installations/{installed['id']}")).json() == installed
        assert (await installation.post("/installations", json=body)).status_code == 409
        foreign = {**body, "cat_id": other["id"]}  # location belongs to the first cat
        assert (await installation.post("/installations", json=foreign)).status_code == 422
        nobody = {**body, "user_id": str(uuid.uuid4()), "permission_ids": []}
        assert (await installation.post("/installations", json=nobody)).status_code == 404

    async with client("proxy-service") as proxy:
        overview = await proxy.get(f"/users/{user['id']}/overview")
        assert overview.status_code == 200, overview.text
        assert overview.json() == {
            "user_id": user["id"],
            "email": "tom@example.com",
            "installed": [
                {
                    "installation_id": installed["id"],
                    "cat_id": cat["id"],
                    "cat_name": "Weather Cat",
                    "granted": ["location"],
                }
            ],
        }
        assert (await proxy.get(f"/users/{uuid.uuid4()}/overview")).status_code == 404
