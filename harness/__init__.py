"""cathouse-harness: Neon branch-aware tooling and a pytest harness for multi-service backends.

The engine, imported as `cathouse_harness` from the repository folder `harness/`. It
never imports pytest; the plugin is `pytest_cathouse_harness` (folder `conftest_plugin/`)
and the command line `cathouse_harness.cli`.
"""

from cathouse_harness.errors import (
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
