"""installation-service: a user installs a cat and grants some of its permissions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from . import health
from .db import DbSession, dispose
from .models import Installation, InstallationPermission, catalog_permissions

FOREIGN_KEY_VIOLATION = "23503"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await dispose()


app = FastAPI(title="installation-service", lifespan=lifespan)
app.include_router(health.router)


class InstallationIn(BaseModel):
    user_id: uuid.UUID
    cat_id: uuid.UUID
    permission_ids: list[uuid.UUID] = []


class InstallationOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    cat_id: uuid.UUID
    installed_at: datetime
    permission_ids: list[uuid.UUID]


def _out(installation: Installation) -> InstallationOut:
    return InstallationOut(
        id=installation.id,
        user_id=installation.user_id,
        cat_id=installation.cat_id,
        installed_at=installation.installed_at,
        permission_ids=sorted(p.permission_id for p in installation.permissions),
    )


async def _load(db: AsyncSession, installation_id: uuid.UUID) -> Installation | None:
    query = (
        select(Installation)
        .where(Installation.id == installation_id)
        .options(selectinload(Installation.permissions))
    )
    return (await db.execute(query)).scalar_one_or_none()


@app.post("/installations", status_code=201, response_model=InstallationOut)
async def create_installation(
    body: InstallationIn, db: DbSession
) -> InstallationOut:
    wanted = set(body.permission_ids)
    if wanted:
        # a grant must be one of the permissions this cat asks for (catalog.permissions)
        query = select(catalog_permissions.c.id).where(
            catalog_permissions.c.cat_id == body.cat_id, catalog_permissions.c.id.in_(wanted)
        )
        known = set((await db.execute(query)).scalars())
        if known != wanted:
            raise HTTPException(422, "some permissions are not asked for by this cat")
    installation = Installation(
        user_id=body.user_id,
        cat_id=body.cat_id,
        permissions=[InstallationPermission(permission_id=p) for p in sorted(wanted)],
    )
    db.add(installation)
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
            raise HTTPException(404, "no such user or cat") from None
        raise HTTPException(409, "this user has already installed this cat") from None
    loaded = await _load(db, installation.id)
    assert loaded is not None
    return _out(loaded)


@app.get("/installations/{installation_id}", response_model=InstallationOut)
async def get_installation(
    installation_id: uuid.UUID, db: DbSession
) -> InstallationOut:
    installation = await _load(db, installation_id)
    if installation is None:
        raise HTTPException(404, "no such installation")
    return _out(installation)
