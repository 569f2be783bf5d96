"""The commands README.md and docs/ show run as shown.

Every line of a bash/sh/console block is either run here (the ones that need no Neon key
and no branch: help, version, `init` on a fresh `alembic init` project) or listed in
EXCLUDED with the reason and the place that runs it instead; a new command in the docs
fails this test until it is one or the other. Every `cathouse-branch …` the pages mention,
in a block or inline, must name a real subcommand and real options, checked against what
`cathouse-branch <command> --help` prints; every `tox -e NAME` a real tox environment."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.cli.test_init import alembic_init

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")

# command as shown -> why it is not run here, and what runs it instead
EXCLUDED = {
    "python3 -m pip install -e '.[dev]' && (cd examples/cathouse && python3 -m pytest -p cathouse_harness)":
        "the quick start: installs into the running environment; tox's `example` environment "
        "runs the example suite",
    "python3 -m pytest -n 2": "the harness's own suite, this test among it (.ci/run runs it)",
    "python3 -m pip install -e /path/to/cathouse-harness": "a placeholder path; "
        "tests/install/test_wheel.py installs the package into a fresh venv",
    "python3 -m pip wheel --no-deps -w dist .": "writes dist/ into the checkout and fetches "
        "setuptools for its build environment; tests/install/test_wheel.py builds the wheel",
    "python3 -m pip install dist/cathouse_harness-0.1.0-py3-none-any.whl": "needs the wheel above; "
        "tests/install/test_wheel.py installs it into a fresh venv",
    "python3 -m pytest -p cathouse_harness": "makes a branch in a configured project: "
        "tests/plugin and tox's `example` environment run the plugin",
    "pytest -p cathouse_harness": "the same, with the pytest console script",
    "export NEON_API_KEY=…": "needs a Neon API key (tox -e neon)",
    "export NEON_PROJECT_ID=…": "needs a Neon project",
    "cd your-project && pytest -p cathouse_harness": "real Neon, with the two above",
    "CATHOUSE_CONFIG=~/cathouse/their-backend.toml python -m pytest -p cathouse_harness":
        "a file of the reader's own; tests/adoption runs projects through CATHOUSE_CONFIG",
    "python -c 'from setuptools import build_meta; print(build_meta.build_sdist(\"dist\"))'":
        "writes dist/ into the checkout; tests/install/test_sdist.py builds the sdist",
    "tar xzf dist/cathouse_harness-0.1.0.tar.gz && cd cathouse_harness-0.1.0":
        "needs the sdist above; tests/install/test_sdist.py unpacks it",
    "python3 -m pip install '.[dev]' && python3 -m pytest tests/unit":
        "installs into the running environment; tests/install/test_sdist.py installs the "
        "unpacked sdist into a fresh venv and runs its tests/unit there",
}
# run in a project fresh from `alembic init`, in this order
IN_A_FRESH_PROJECT = ("cathouse-branch init", "cathouse-branch init --yes")


def _blocks() -> Iterator[tuple[Path, str, str]]:
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
            yield page, match[1], match[2]


def _command(line: str) -> str:
    """The line without its prompt and its trailing `# comment`."""
    line = line.strip().removeprefix("$ ")
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def _shell_commands() -> list[tuple[str, str]]:
    found = []
    for page, language, body in _blocks():
        if language in SHELL_BLOCKS:
            found += [(page.name, _command(line)) for line in body.splitlines() if _command(line)]
    return found


def _runs_anywhere(command: str) -> bool:
    words = command.split()
    return words[:1] == ["cathouse-branch"] and ("--help" in words or words[1:] == ["--version"]) or (
        words[:3] == ["python3", "-m", "cathouse_harness"] and "--help" in words
    )


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "cathouse-branch":
        return [*_cli(), *words[1:]]
    if words[0] in ("python", "python3"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"no way to run {command!r}")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "cathouse-branch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cathouse_harness"]


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEON_")}
    return subprocess.run(_argv(command), cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def test_every_shell_command_runs_or_says_why_not(tmp_path: Path) -> None:
    commands = _shell_commands()
    assert len(commands) >= 10  # the scan still finds the blocks
    unaccounted = [
        f"{page}: {command}" for page, command in commands
        if command not in EXCLUDED and command not in IN_A_FRESH_PROJECT and not _runs_anywhere(command)
    ]
    assert unaccounted == []
    shown = {command for _, command in commands}
    assert sorted(set(EXCLUDED) - shown) == []  # an exclusion outlives its command: drop it
    assert set(IN_A_FRESH_PROJECT) <= shown

    for command in sorted(c for c in shown if _runs_anywhere(c)):
        done = _run(command, tmp_path)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert done.stdout.strip(), command

    project = tmp_path / "fresh"
    alembic_init(project, "generic")
    for command in IN_A_FRESH_PROJECT:
        done = _run(command, project)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    assert "[tool.cathouse_harness]" in (project / "pyproject.toml").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run ends with the README's test command, exactly (the quick start's second line)."""
    quick_start = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Quick start\n", 1)[1]
    shown = [_command(line) for line in BLOCK.search(quick_start)[2].splitlines()]  # type: ignore[index]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert ci[-1] == shown[-1]


@cache
def _help(command: str) -> str:
    done = subprocess.run([*_cli(), *([command] if command else []), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"cathouse-branch {command} --help: {done.stderr}"
    return done.stdout


def _commands() -> set[str]:
    listed = _help("").split("commands:", 1)[1]
    return set(re.findall(r"^\s{4}([a-z]+)\s", listed, re.M))


def _mentions() -> Iterator[tuple[str, str]]:
    """Each `cathouse-branch …` the pages show, split where a synopsis lists alternatives."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        spans = [m[2] for m in BLOCK.finditer(text)]
        spans += [" ".join(m[1].split()) for m in INLINE.finditer(BLOCK.sub("", text))]
        for span in spans:
            for line in span.splitlines():
                for rest in _command(line).split("cathouse-branch")[1:]:
                    # a synopsis lists alternatives: `down [NAME] | list | gc [--dry-run]`
                    for alternative in re.split(r"\s+\|\s+", rest):
                        yield page.name, re.split(r"[)\"$]", alternative)[0]


def test_every_cathouse_branch_mention_names_real_commands_and_options() -> None:
    commands = _commands()
    assert {"up", "down", "gc", "init", "doctor"} <= commands
    wrong = []
    checked = 0
    for page, words in _mentions():
        tokens = [t.strip("[]") for t in words.split()]
        subcommand = next((t for t in tokens if not t.startswith("-")), None)
        if subcommand is not None and (subcommand.isupper() or subcommand.startswith("<")):
            subcommand = None  # a placeholder: COMMAND, <version>
        if subcommand is not None and subcommand not in commands:
            wrong.append(f"{page}: cathouse-branch {words.strip()}: no command {subcommand!r}")
            continue
        text = _help(subcommand or "")
        for option in (t.split("=")[0] for t in tokens if t.startswith("--")):
            checked += 1
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                wrong.append(f"{page}: cathouse-branch {words.strip()}: no option {option}")
    assert checked >= 15  # the scan still finds the options it is meant to check
    assert wrong == []


def test_the_tox_environments_the_docs_name_exist() -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    named = set(re.findall(r"tox -e ([\w-]+)", text))
    listing = re.search(r"`tox -l` lists it: (.*?)\.", " ".join(text.split()))
    assert listing, "docs/cli.md no longer says what `tox -l` lists"
    named |= set(re.findall(r"`([\w-]+)`", listing[1]))
    assert {"neon", "py311", "example"} <= named
    done = subprocess.run([sys.executable, "-m", "tox", "-l"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(named - set(done.stdout.split())) == []


def test_every_plugin_option_the_pages_name_exists(tmp_path: Path) -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    named = set(re.findall(r"--cathouse-[a-z-]*[a-z]", text))
    assert {"--cathouse-backend", "--cathouse-keep-branch"} <= named
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "cathouse_harness", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(o for o in named if not re.search(rf"{o}(?![\w-])", done.stdout)) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_the_pages_name_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for span in INLINE.findall(text):
        for path in re.findall(r"(?<![\w/.-])((?:tests|harness|conftest_plugin|benchmarks|scripts|examples|"
                               r"docs)/[\w./-]*\w)", span):
            if "<" in span or path.startswith("harness/dev"):  # branch names, not files
                continue
            if not (ROOT / path.split("::")[0]).exists():
                missing.append(path)
    assert missing == []


def test_modules_run_with_python_m_exist(tmp_path: Path) -> None:
    """Found from outside the checkout, where the folder `harness/` is no module; the
    suite's own scripts (`tests.…`), which the pages run from the checkout, from there."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    modules = sorted(set(re.findall(r"python3? -m ([\w.]+)", text)))
    assert {"cathouse_harness", "pytest"} <= set(modules)
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m) is None])"
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ours = [m for m in modules if m.startswith("tests.")]
    for where, names in ((tmp_path, [m for m in modules if m not in ours]), (ROOT, ours)):
        done = subprocess.run([sys.executable, "-c", probe, *names], cwd=where, capture_output=True,
                              text=True, timeout=60, env=environ)
        assert done.stdout.strip() == "[]", done.stderr
