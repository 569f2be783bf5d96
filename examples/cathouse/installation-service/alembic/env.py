"""Alembic environment of installation-service: owns the `installation` schema, nothing else.

The implementation is shared: cathouse_common/alembic_env.py, run by path (it says why).
"""

import runpy
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[1]
shared = runpy.run_path(str(SERVICE_DIR.parent / "cathouse_common" / "alembic_env.py"))
shared["run_migrations"](schema="installation", models=SERVICE_DIR / "app" / "models.py")
