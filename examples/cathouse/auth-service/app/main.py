"""auth-service: create and read Cat House users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from . import health
from .db import DbSession, dispose
from .models import User


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await dispose()


app = FastAPI(title="auth-service", lifespan=lifespan)
app.include_router(health.router)


class UserIn(BaseModel):
    email: str = Field(min_length=3, max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")
    display_name: str | None = Field(default=None, max_length=100)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    display_name: str | None
    is_active: bool
    created_at: datetime


@app.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn, db: DbSession) -> User:
    user = User(email=body.email.lower(), display_name=body.display_name)
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPException(409, "this email is already registered") from None
    await db.refresh(user)
    return user


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: uuid.UUID, db: DbSession) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return user
