"""The wheel as a user installs it, beside a project that has a `harness/` package and a
`conftest_plugin/` folder of its own (issue #22: the names we install must not be theirs).

The wheel is built from a copy of the repository's sources with this environment's
setuptools and installed (`--no-deps`) into a fresh venv. Our packages come only from the
wheel: the venv sees no site-packages of ours, and its third-party packages are the
wheel's declared requirements and theirs, taken from this environment (a folder of links
to exactly those distributions, named by a .pth file), so an undeclared import fails here
as it would for a user, and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# what setuptools reads to build the wheel (pyproject.toml names README.md as the readme;
# LICENSE goes into the dist-info as license = "MIT" has setuptools find it)
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "harness", "conftest_plugin")

# The user's project. Its `harness` has a `redact` module as ours had before the rename,
# so a wheel that installed a top-level `harness` would hand the conftest ours.
USER_HARNESS_INIT = 'OWNER = "catfood"\n'
USER_HARNESS_REDACT = 'def redact(text):\n    return "catfood-redacted"\n'
USER_CONFTEST_PLUGIN = 'NAME = "catfood-conftest-plugin"\n'
USER_CONFTEST = """
import harness
import conftest_plugin
import pytest
from harness.redact import redact


@pytest.fixture
def own_harness():
    return harness
"""
USER_TEST = """
import json
import os
import sys

import conftest_plugin
from harness.redact import redact


def test_own_harness(own_harness, request):
    assert own_harness.OWNER == "catfood"
    assert redact("x") == "catfood-redacted"
    assert conftest_plugin.NAME == "catfood-conftest-plugin"
    plugin = request.config.pluginmanager.get_plugin("cathouse_harness")
    with open(os.environ["WHEEL_RECORD"], "w") as out:
        json.dump(
            {
                "harness": own_harness.__file__,
                "conftest_plugin": conftest_plugin.__file__,
                "plugin": getattr(plugin, "__file__", None),
                "engine": sys.modules["cathouse_harness"].__file__,
            },
            out,
        )
"""


def _run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{output}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources: the build writes build/ and egg-info
    next to them, and a stale build/lib in the work tree would end up in the wheel."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(source)],
        cwd=source,
    )
    (built,) = out.glob("cathouse_harness-*.whl")
    return built


def _requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata).decode())
    return [Requirement(text) for text in message.get_all("Requires-Dist") or []]


def _wanted(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def _closure(requirements: list[Requirement]) -> dict[str, Distribution]:
    """Every distribution of this environment the requirements pull in, by name."""
    found: dict[str, Distribution] = {}
    extras_of: dict[str, set[str]] = {}
    todo = [r for r in requirements if _wanted(r, ())]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        new_extras = set(requirement.extras) - extras_of.get(name, set())
        if name in found and not new_extras:
            continue
        try:
            dist = found.get(name) or distribution(requirement.name)
        except PackageNotFoundError:
            pytest.fail(f"{requirement} (a requirement of the wheel) is not installed here")
        found[name] = dist
        extras_of.setdefault(name, set()).update(requirement.extras)
        todo.extend(r for r in map(Requirement, dist.requires or []) if _wanted(r, extras_of[name]))
    return found


def _link_distributions(dists: Iterable[Distribution], folder: Path) -> None:
    """A link in `folder` to each top-level entry (package, module, .dist-info, .libs) of
    each distribution, as its RECORD lists them."""
    folder.mkdir()
    for dist in dists:
        files = dist.files
        assert files is not None, f"{dist.metadata['Name']} has no RECORD to link from"
        for top in {f.parts[0] for f in files if f.parts and f.parts[0] not in ("..", "__pycache__")}:
            target, link = Path(str(dist.locate_file(top))), folder / top
            if target.exists() and not link.exists():
                link.symlink_to(target)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    deps = root / "deps"
    _link_distributions(_closure(_requirements(wheel)).values(), deps)
    (site / "declared_dependencies.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "-q", str(wheel)], cwd=root)
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    """The machine's environment less what would bend the run: our variables and pytest's,
    another venv, PYTHONPATH; `extra` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CATHOUSE_", "NEON_", "PYTEST_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "MIGRATION_DATABASE_URL")
    }
    env.update(extra)
    return env


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    project = tmp_path / "catfood"
    (project / "harness").mkdir(parents=True)
    (project / "harness" / "__init__.py").write_text(USER_HARNESS_INIT)
    (project / "harness" / "redact.py").write_text(USER_HARNESS_REDACT)
    (project / "conftest_plugin").mkdir()
    (project / "conftest_plugin" / "__init__.py").write_text(USER_CONFTEST_PLUGIN)
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "tests").mkdir()
    (project / "tests" / "test_own.py").write_text(USER_TEST)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "catfood"\nversion = "0"\n\n'
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
    )
    return project


def test_the_wheel_holds_our_import_names_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        entry_points = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_text = archive.read(entry_points).decode()
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"cathouse_harness", "pytest_cathouse_harness"}
    with zipfile.ZipFile(wheel) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert re.search(r"^cathouse_harness = pytest_cathouse_harness\.plugin$", entry_text, re.M)
    assert re.search(r"^cathouse-branch = cathouse_harness\.cli\.commands:main$", entry_text, re.M)


def test_a_project_with_its_own_harness_runs_beside_the_plugin(
    venv: Path, user_project: Path, tmp_path: Path
) -> None:
    python = str(venv / "bin" / "python")
    site = str(venv / "lib")
    home = tmp_path / "untouched-home"  # nothing may create it: no branch, no server
    record = tmp_path / "record.json"
    env = _clean_env(CATHOUSE_HARNESS_HOME=str(home), WHEEL_RECORD=str(record))

    done = _run([python, "-m", "pytest", "-p", "no:cacheprovider"], cwd=user_project, env=env)

    assert re.search(r"\b1 passed\b", done.stdout), done.stdout
    seen = json.loads(record.read_text())
    # the conftest's `harness` and `conftest_plugin` are the project's own ...
    assert seen["harness"] == str(user_project / "harness" / "__init__.py")
    assert seen["conftest_plugin"] == str(user_project / "conftest_plugin" / "__init__.py")
    # ... while the plugin, loaded through its entry point, and the engine are the wheel's
    assert seen["plugin"] is not None and seen["plugin"].startswith(site), seen
    assert seen["engine"].startswith(site), seen
    # and idle: nothing of ours printed but pytest's list of plugins, nothing written
    ours = [line for line in done.stdout.splitlines() if "cathouse" in line.lower()]
    assert len(ours) == 1 and ours[0].startswith("plugins:"), ours
    assert not home.exists()


def test_dash_p_loads_the_plugin_without_autoload(venv: Path, user_project: Path, tmp_path: Path) -> None:
    python = str(venv / "bin" / "python")
    env = _clean_env(CATHOUSE_HARNESS_HOME=str(tmp_path / "home"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    listing = [python, "-m", "pytest", "-p", "no:cacheprovider", "--fixtures"]

    without = _run(listing, cwd=user_project, env=env).stdout
    with_plugin = _run([*listing, "-p", "cathouse_harness"], cwd=user_project, env=env).stdout

    assert not re.search(r"^neon_branch\b", without, re.M)
    assert re.search(r"^neon_branch\b", with_plugin, re.M), with_plugin[-3000:]
    assert re.search(r"^db_session\b", with_plugin, re.M)


def test_the_commands_run_from_the_venv(venv: Path, user_project: Path, tmp_path: Path) -> None:
    env = _clean_env(CATHOUSE_HARNESS_HOME=str(tmp_path / "home"))
    python = str(venv / "bin" / "python")
    module = _run([python, "-m", "cathouse_harness", "--help"], cwd=user_project, env=env)
    script = _run([str(venv / "bin" / "cathouse-branch"), "--help"], cwd=user_project, env=env)

    assert module.stdout.startswith("usage:") and script.stdout.startswith("usage:")
    assert "migrate" in script.stdout and script.stdout.split("\n", 1)[1] == module.stdout.split("\n", 1)[1]
