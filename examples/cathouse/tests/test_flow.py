"""A user, their cat and an installation with permissions, across three services and
three schemas, read back through the proxy."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx


async def test_user_cat_installation_flow(service_client: Callable[[str], httpx.AsyncClient]) -> None:
    email = f"owner-{uuid.uuid4().hex[:8]}@cathouse.test"
    user = await service_client("auth-service").post("/users", json={"email": email})
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]

    cat = await service_client("catalog-service").post(
        "/cats",
        json={
            "owner_id": user_id,
            "name": "Miso",
            "permissions": [{"name": "feed"}, {"name": "brush", "description": "weekly"}],
        },
    )
    assert cat.status_code == 201, cat.text
    cat_body = cat.json()
    permission_ids = [p["id"] for p in cat_body["permissions"]]
    assert len(permission_ids) == 2

    installation = await service_client("installation-service").post(
        "/installations",
        json={"user_id": user_id, "cat_id": cat_body["id"], "permission_ids": permission_ids},
    )
    assert installation.status_code == 201, installation.text
    assert sorted(installation.json()["permission_ids"]) == sorted(permission_ids)

    overview = await service_client("proxy-service").get(f"/users/{user_id}/overview")
    assert overview.status_code == 200, overview.text
    body = overview.json()
    assert body["email"] == email
    assert [c["cat_name"] for c in body["installed"]] == ["Miso"]
    assert sorted(body["installed"][0]["granted"]) == ["brush", "feed"]


async def test_foreign_keys_hold_across_schemas(service_client: Callable[[str], httpx.AsyncClient]) -> None:
    stranger = str(uuid.uuid4())
    cat = await service_client("catalog-service").post("/cats", json={"owner_id": stranger, "name": "Ghost"})
    assert cat.status_code in (404, 409, 422), cat.text
