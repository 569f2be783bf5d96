"""What every cathouse-branch command works with: its context and the backend's client.

`Context` carries a command's arguments, output and progress, and reads the project's
settings when first asked; `with_client` runs one piece of async work against the
backend through the one sync-to-async bridge (`cathouse_harness.support.sync.run_sync`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cathouse_harness.cli.args import PROG, Progress
from cathouse_harness.config.envfile import read_env_file
from cathouse_harness.config.settings import Settings, load_settings
from cathouse_harness.errors import ConfigError
from cathouse_harness.support.redact import redact_url


class Context:
    """One command's arguments, output streams and progress; its settings, read on first use."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.progress = Progress(err, quiet=getattr(args, "quiet", False) or False)
        self.project_dir: Path = (args.project_dir or Path.cwd()).resolve()
        if not self.project_dir.is_dir():
            raise ConfigError(f"{str(self.project_dir)!r} is not a directory", key="--project-dir")
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            options: dict[str, Any] = {"backend": self.args.backend}
            if getattr(self.args, "storage", None) and self.args.command != "emulator":
                options["local_storage"] = self.args.storage
            if getattr(self.args, "parent", None):
                options["parent_branch"] = self.args.parent
            self._settings = load_settings(self.project_dir, options=options)
        return self._settings

    @property
    def env_file(self) -> Path:
        given = getattr(self.args, "env_file", None)
        return (given or self.project_dir / ".env").resolve()

    def url(self, url: str) -> str:
        return url if self.args.show_secrets else redact_url(url)

    def emit(self, payload: dict[str, Any], human: Sequence[str]) -> None:
        if self.args.json:
            print(json.dumps(payload, indent=2, default=str), file=self.out)
        else:
            for line in human:
                print(line, file=self.out)


def with_client(ctx: Context, work: Callable[[Any, str], Any]) -> Any:
    """Run `work(client, project_id)` on the backend with a fresh client."""
    from cathouse_harness.neon.backend import connect_backend, open_client
    from cathouse_harness.support.sync import run_sync

    with ctx.progress.step("connect to backend"):
        backend = connect_backend(ctx.settings)
        if backend.kind == "neon":
            # the mark means what it says: the API's host accepted a connection
            probe_api_host(backend.api_host)

    async def _main() -> Any:
        async with open_client(backend) as client:
            return await work(client, backend.project_id)

    from cathouse_harness.branching.lifecycle import refused_key
    from cathouse_harness.errors import NeonAPIError

    try:
        return run_sync(_main())
    except NeonAPIError as exc:
        refused = refused_key(exc, ctx.settings)
        if refused is not None:
            raise refused from None
        raise


PROBE_SECONDS = 10.0


def probe_api_host(api_host: str, timeout: float = PROBE_SECONDS) -> None:
    """Open (and close) a TCP connection to the API's host: a closed port or an unknown
    name is one line at once, before any request. Only the handshake is tried here, once;
    what can pass (a slow answer, 5xx, 429) is the transport's to retry."""
    import socket
    from urllib.parse import urlsplit

    from cathouse_harness.errors import NeonAPIError

    parts = urlsplit(api_host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NeonAPIError(
            f"cannot connect to {parts.hostname}:{port} ({reason})",
            hint="check api_host / NEON_API_HOST and the network",
        ) from None


def git_branch(directory: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=directory, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = result.stdout.strip()
    return name if result.returncode == 0 and name and name != "HEAD" else None


def branch_from_env(ctx: Context, name: str | None) -> str:
    if name:
        return name
    values = read_env_file(ctx.env_file)
    branch = values.get("CATHOUSE_BRANCH_ID")
    if not branch:
        raise ConfigError(
            "no branch given and none recorded",
            key="CATHOUSE_BRANCH_ID",
            source=str(ctx.env_file),
            hint=f"name the branch, or run {PROG} up first",
        )
    return branch
