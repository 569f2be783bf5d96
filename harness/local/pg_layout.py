"""What every PostgreSQL we run shares: the bootstrap superuser's name, the storage
kinds, the settings every instance is told (`cathouse_harness.local.compute.template`
adds a small instance's own)."""

from __future__ import annotations

from typing import Literal

SUPERUSER = "postgres"
Storage = Literal["memory", "disk"]

def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


# what every PostgreSQL we run is told, whatever its size: SCRAM, quiet logs that never
# carry a statement, UTC, no JIT (its compile time costs more than small queries gain)
COMMON_SETTINGS: dict[str, str | int] = {
    "password_encryption": "scram-sha-256",
    "dynamic_shared_memory_type": "posix",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # statements may carry secrets; never log them
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "timezone": "UTC",
    "jit": "off",
}


def conf_text(settings: dict[str, str | int]) -> str:
    """Settings as lines of a PostgreSQL configuration file."""
    return "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
