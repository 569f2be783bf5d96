"""Async Neon API v2 client: models, retries, operation waiting, call statistics.

The same client talks to real Neon and to the embedded local server (`harness.local`).
"""

from harness.errors import NeonAPIError
from harness.neon.client import DEFAULT_API_HOST, UNSET, NeonClient, NeonOperationError
from harness.neon.models import (
    Branch,
    BranchCreated,
    ConnectionInfo,
    Database,
    Endpoint,
    Operation,
    Project,
    Role,
)
from harness.neon.retry import RetryPolicy
from harness.neon.stats import ApiStats

__all__ = [
    "DEFAULT_API_HOST",
    "UNSET",
    "ApiStats",
    "Branch",
    "BranchCreated",
    "ConnectionInfo",
    "Database",
    "Endpoint",
    "NeonAPIError",
    "NeonClient",
    "NeonOperationError",
    "Operation",
    "Project",
    "RetryPolicy",
    "Role",
]
