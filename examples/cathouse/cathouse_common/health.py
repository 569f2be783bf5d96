"""`GET /health/db`, as the seed asks for, without the seed's leak.

The seed answered `{"error": str(e)}`; a driver's message can carry a host, a user or a
whole URL. We answer with the exception's class name only, and 503 so that load
balancers and orchestrators see the failure.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from .db import ServiceDatabase

log = logging.getLogger(__name__)


def health_router(database: ServiceDatabase) -> APIRouter:
    """A router with the service's `/health/db` on its own engine."""
    router = APIRouter()
    service = database.service.name

    @router.get("/health/db")
    async def db_health() -> JSONResponse:
        try:
            async with database.get_sessionmaker()() as db:
                await db.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("%s: database health check failed: %s", service, type(exc).__name__)
            return JSONResponse(
                {"status": "unhealthy", "error": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "healthy"})

    return router
