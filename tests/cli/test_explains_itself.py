"""cathouse-branch explains itself: help on every command and option, --version, and
one honest line, fast, when the backend's port is closed."""

from __future__ import annotations

import argparse
import socket
from importlib.metadata import version
from pathlib import Path

import pytest
from cathouse_harness.cli.args import build_parser

from tests.cli._support import cli, error_lines


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_has_a_description_and_every_option_help() -> None:
    commands = _subcommands(build_parser())
    expected = {"up", "down", "list", "url", "reset", "gc", "migrate", "doctor", "init", "emulator"}
    assert expected <= set(commands)
    missing = []
    for name, sub in commands.items():
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if action.help in (None, "") and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    code, out, err = cli("--version", cwd=tmp_path)
    assert (code, out.strip(), err) == (0, f"cathouse-branch {version('cathouse-harness')}", "")


def test_command_help_describes_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli("list", "--help", cwd=tmp_path)
    out = capsys.readouterr().out  # argparse writes help to sys.stdout
    assert code == 0
    assert "List the branches the harness made" in out and "--json" in out


def _closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["list", "gc"])
def test_a_closed_port_fails_at_connect_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Nothing listening on the configured (local) API port: the connect step is marked
    failed, not passed, and the command ends at once with one line and exit 1 (a
    failure, not a usage error) instead of retrying a refused connection."""
    port = _closed_port()
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.cathouse_harness]\nproject_id = "p-closed"\napi_host = "http://127.0.0.1:{port}/api/v2"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("NEON_API_KEY", "test-key-closed-port")
    code, out, err = cli(command, "--backend", "neon", cwd=tmp_path)
    assert code == 1, err
    assert "✓ connect to backend" not in err and "✗ connect to backend" in err
    (line,) = error_lines(err)
    assert f"127.0.0.1:{port}" in line and "api_host" in line
    assert "gave up after" not in line and "test-key-closed-port" not in out + err
