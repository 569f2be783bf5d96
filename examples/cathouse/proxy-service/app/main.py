"""proxy-service: answers read-only questions that span every service's schema.

Its engine is read-only (every transaction is BEGIN READ ONLY, and on a direct
connection default_transaction_read_only is on too), so a mistake here cannot write.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import text

from . import health
from .db import DbSession, dispose


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await dispose()


app = FastAPI(title="proxy-service", lifespan=lifespan)
app.include_router(health.router)


class InstalledCat(BaseModel):
    installation_id: uuid.UUID
    cat_id: uuid.UUID
    cat_name: str
    granted: list[str]


class UserOverview(BaseModel):
    user_id: uuid.UUID
    email: str
    installed: list[InstalledCat]


_USER = text("SELECT id, email FROM auth.users WHERE id = :user_id")
_INSTALLED = text(
    """
    SELECT i.id, c.id, c.name,
           coalesce(array_agg(p.name ORDER BY p.name) FILTER (WHERE p.name IS NOT NULL),
                    '{}') AS granted
      FROM installation.installations i
      JOIN catalog.cats c ON c.id = i.cat_id
      LEFT JOIN installation.installation_permissions ip ON ip.installation_id = i.id
      LEFT JOIN catalog.permissions p ON p.id = ip.permission_id
     WHERE i.user_id = :user_id
     GROUP BY i.id, c.id, c.name
     ORDER BY c.name, i.id
    """
)


@app.get("/users/{user_id}/overview", response_model=UserOverview)
async def user_overview(user_id: uuid.UUID, db: DbSession) -> UserOverview:
    user = (await db.execute(_USER, {"user_id": user_id})).one_or_none()
    if user is None:
        raise HTTPException(404, "no such user")
    rows = (await db.execute(_INSTALLED, {"user_id": user_id})).all()
    return UserOverview(
        user_id=user.id,
        email=user.email,
        installed=[
            InstalledCat(installation_id=r[0], cat_id=r[1], cat_name=r[2], granted=list(r[3]))
            for r in rows
        ],
    )
