"""`GET /health/db` of auth-service (cathouse_common.health): 503 and the error's class
name only, never the URL."""

from cathouse_common.health import health_router

from .db import database

router = health_router(database)
