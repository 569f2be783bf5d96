"""The sdist holds what it takes to check the package (tests, the example, docs,
benchmarks, the license), never a developer's `.env`, and its own tests pass from it.

It is built from a copy of the checkout with this environment's setuptools (PEP 517's
`build_sdist`, nothing downloaded) and unpacked. A wheel built from the unpacked tree goes
into a fresh venv whose third-party packages are the declared requirements, the `dev`
extra's included, linked from this environment as tests/install/test_wheel.py does; the
unpacked tests/unit then run with that venv's python, so the code under test is the
sdist's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.install.test_wheel import _clean_env, _closure, _link_distributions, _requirements, _run, _wanted

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# what a checkout holds that is no source: environments, caches, build output
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist", ".mypy_cache",
    ".ruff_cache", ".pytest_cache",
)
# the command docs/cli.md shows, run from the checkout's root
BUILD_SDIST = "from setuptools import build_meta; print(build_meta.build_sdist({out!r}))"


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("checkout") / "cathouse-harness"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES, symlinks=True)
    # a developer's .env beside the example, as `cathouse-branch up` leaves one
    (source / "examples" / "cathouse" / ".env").write_text("DATABASE_URL='postgresql://me:pw@x/db'\n")
    out = tmp_path_factory.mktemp("sdist")
    name = _run([sys.executable, "-c", BUILD_SDIST.format(out=str(out))], cwd=source).stdout.split()[-1]
    with tarfile.open(out / name) as archive:
        archive.extractall(out, filter="data")
    return out / name.removesuffix(".tar.gz")


def test_the_sdist_holds_the_tests_examples_docs_and_license(unpacked: Path) -> None:
    for path in ("LICENSE", "CHANGELOG.md", "README.md", "tox.ini", "docs/performance.md",
                 "tests/conftest.py", "tests/unit", "examples/cathouse/pyproject.toml",
                 "benchmarks/run.py", "benchmarks/results/latest.json", "scripts/branch-up.sh",
                 "harness/__init__.py", "conftest_plugin/plugin.py"):
        assert (unpacked / path).exists(), path
    assert not list(unpacked.rglob(".env"))
    assert not list(unpacked.rglob("__pycache__"))


def test_its_own_unit_tests_pass_from_the_unpacked_sdist(
    unpacked: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("sdist-venv")
    wheelhouse = root / "wheelhouse"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(wheelhouse), str(unpacked)], cwd=root)
    (wheel,) = wheelhouse.glob("cathouse_harness-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    # the dev extra's requirements without their `extra == "dev"` marker, so the closure takes them
    wanted = [Requirement(f"{r.name}{''.join(f'[{e}]' for e in sorted(r.extras))}{r.specifier}")
              for r in _requirements(wheel) if _wanted(r, ("dev",))]
    _link_distributions(_closure(wanted).values(), root / "deps")
    (site / "declared_dependencies.pth").write_text(f"{root / 'deps'}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "-q", str(wheel)], cwd=root)

    done = subprocess.run(
        [str(python), "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=unpacked, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    where = _run([str(python), "-c", "import cathouse_harness; print(cathouse_harness.__file__)"],
                 cwd=unpacked, env=_clean_env()).stdout
    assert where.startswith(str(site)), where  # the sdist's code, as installed, not the checkout's
