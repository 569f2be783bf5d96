"""catalog-service: publish cats with the permissions they ask for."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from . import health
from .db import DbSession, dispose
from .models import Cat, Permission

FOREIGN_KEY_VIOLATION = "23503"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await dispose()


app = FastAPI(title="catalog-service", lifespan=lifespan)
app.include_router(health.router)


class PermissionIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = None


class CatIn(BaseModel):
    owner_id: uuid.UUID
    name: str = Field(min_length=1, max_length=100)
    description: str | None = None
    permissions: list[PermissionIn] = []


class PermissionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None


class CatOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: str | None
    permissions: list[PermissionOut]


async def _load(db: AsyncSession, cat_id: uuid.UUID) -> Cat | None:
    query = select(Cat).where(Cat.id == cat_id).options(selectinload(Cat.permissions))
    return (await db.execute(query)).scalar_one_or_none()


@app.post("/cats", status_code=201, response_model=CatOut)
async def create_cat(body: CatIn, db: DbSession) -> Cat:
    names = [p.name for p in body.permissions]
    if len(set(names)) != len(names):
        raise HTTPException(422, "permission names must be unique")
    cat = Cat(
        owner_id=body.owner_id,
        name=body.name,
        description=body.description,
        permissions=[Permission(name=p.name, description=p.description) for p in body.permissions],
    )
    db.add(cat)
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
            raise HTTPException(404, "no such owner") from None
        raise HTTPException(409, "conflicts with an existing cat") from None
    loaded = await _load(db, cat.id)
    assert loaded is not None
    return loaded


@app.get("/cats/{cat_id}", response_model=CatOut)
async def get_cat(cat_id: uuid.UUID, db: DbSession) -> Cat:
    cat = await _load(db, cat_id)
    if cat is None:
        raise HTTPException(404, "no such cat")
    return cat
