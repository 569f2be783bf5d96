"""cathouse-harness: Neon branch-aware tooling and a pytest harness for multi-service backends.

`harness` is the engine. It never imports pytest; the plugin lives in `conftest_plugin`
and the command line in `harness.cli`.
"""

from harness.errors import (
    ConfigError,
    HarnessError,
    LocalServerError,
    MigrationError,
    NeonAPIError,
    SafetyError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "HarnessError",
    "LocalServerError",
    "MigrationError",
    "NeonAPIError",
    "SafetyError",
    "__version__",
]
