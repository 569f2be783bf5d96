"""Which extensions a branch's instance can create: Neon's list, without parsing SQL.

The shared plane's relay reads every CREATE EXTENSION (`neon_features`); an instance's
relay parses nothing. So the instance itself is told where its extensions are:
PostgreSQL 18's `extension_control_path` names a directory of the home's, and CREATE
EXTENSION finds there only

- links to the control and script files of the extensions Neon offers that this
  PostgreSQL has, and
- for one Neon offers that this PostgreSQL lacks, a stub: a trusted control file whose
  script raises the one line that says how to get a PostgreSQL that has it. The script
  fails inside CREATE EXTENSION, so nothing of it stays in the database (nor in a
  pg_dump); it shows in `pg_available_extensions` with STUB_COMMENT, which the plane's
  feature probe leaves out.

Anything else is "not available", PostgreSQL's own words, which is what a Neon compute
answers for an extension it has no files for.

PostgreSQL 15-17 have no such setting, but an installation is relocatable: the
postmaster finds its share directory relative to the real path of its own executable.
So their instances run a per-home mirror (`mirror`): a copy of `postgres` (9 MiB, made
once per home; a link would be resolved), links to every other program and to the
library directory, and a share directory of links whose `extension/` is the directory
above. Its cost (benchmarks/compute_fork.py, which runs its floors on the original):
none measurable on a fork; ~1.5 MiB more PSS per idle instance, its binary's pages
being shared within the home only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from cathouse_harness.local import locations
from cathouse_harness.local.pg_choice import PgInstall
from cathouse_harness.local.sim.neon_features import (
    NEON_EXTENSIONS,
    ServerFeatures,
    extension_refusal,
    extra_extensions,
)
from cathouse_harness.support.safe_paths import ensure_dir, remove_tree, write_private

SETTING = "extension_control_path"
STUB_COMMENT = "cathouse-harness: offered by Neon, not installed in this PostgreSQL"
_STUB_VERSION = "0"
_MARKER = ".cathouse-extensions"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def supported(install: PgInstall) -> bool:
    return int(install.major) >= 18


def _config(install: PgInstall, *names: str) -> list[Path] | None:
    """Directories as the installation's pg_config computes them (relocated for the
    wheel's; /usr/share/postgresql/<major> and the like for Debian's); None without one."""
    try:
        found = subprocess.run([str(install.bin_dir / "pg_config"), *(f"--{name}" for name in names)],
                               capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return [Path(line.strip()) for line in found[: len(names)]]


def _ours(base: Path, path: Path) -> Path:
    """`path` and every directory between `base` and it: ours, readable by the
    instances' user, who cannot change what its postmaster is given."""
    for made in [*reversed(path.relative_to(base).parents)][1:] + [path.relative_to(base)]:
        ensure_dir(base / made, mode=0o755, owners={os.geteuid()})
    return path


def _stub_script(message: str) -> str:
    tag = "$cathouse_refusal$"
    assert tag not in message  # a dollar-quoted literal ends at its tag
    # plpgsql is in every database initdb makes; the RAISE aborts CREATE EXTENSION
    return f"DO $cathouse$ BEGIN RAISE EXCEPTION USING MESSAGE = {tag}{message}{tag}; END $cathouse$;\n"


def mirror(base: Path, install: PgInstall) -> PgInstall:
    """`install` itself from PostgreSQL 18 on (or without pg_config); before, a mirror
    of it under `base` whose postmaster finds only Neon's extensions. Each start
    refreshes what changed (a running postmaster keeps the file it was started from)."""
    if supported(install) or install.source is not None:
        return install
    found = _config(install, "bindir", "sharedir", "pkglibdir")
    if found is None:
        return install
    bindir, sharedir, pkglibdir = found
    # the layout below the three's common prefix is what PostgreSQL relocates by
    prefix = Path(os.path.commonpath([bindir, sharedir, pkglibdir]))
    root = base / "mirrors" / locations.short_hash(f"{install.root.resolve()}|{install.version}")
    share = _ours(base, root / sharedir.relative_to(prefix))
    _fill(base, share, install, sharedir / "extension")
    bin_mirror = _ours(base, root / bindir.relative_to(prefix))
    library = root / pkglibdir.relative_to(prefix)
    _ours(base, library.parent)
    links = [(pkglibdir, library)]
    links += [(entry, share / entry.name) for entry in sharedir.iterdir() if entry.name != "extension"]
    links += [(entry, bin_mirror / entry.name) for entry in bindir.iterdir() if entry.name != "postgres"]
    for target, link in links:
        if not link.is_symlink():
            os.symlink(target, link)
    real, copy = (bindir / "postgres").stat(), bin_mirror / "postgres"
    stamp = (real.st_size, real.st_mtime_ns)
    if not copy.is_file() or (copy.stat().st_size, copy.stat().st_mtime_ns) != stamp:
        # a copy, not a link: PostgreSQL resolves links of its executable
        shutil.copy2(bindir / "postgres", bin_mirror / ".postgres.tmp")
        os.replace(bin_mirror / ".postgres.tmp", copy)
    return replace(install, root=bin_mirror.parent, source=install.root)


def prepare(base: Path, root: Path, install: PgInstall) -> dict[str, str]:
    """Make `root`/extension for `install` (again when Neon's list or the extras
    changed); the setting that points the instances at it, or {} before PostgreSQL 18
    (their mirror has the directory in its place)."""
    if not supported(install):
        return {}
    found = _config(install, "sharedir")
    _fill(base, root, install, (found[0] if found else install.root / "share") / "extension")
    return {SETTING: str(root)}


def _fill(base: Path, root: Path, install: PgInstall, source: Path) -> None:
    # a name becomes a file name here: only what an extension's name can be
    offered = sorted(name for name in NEON_EXTENSIONS | extra_extensions() if _NAME.fullmatch(name))
    folder = root / "extension"
    stamp = locations.short_hash(f"{install.root.resolve()}|{install.version}|{' '.join(offered)}")
    if (folder / _MARKER).is_file() and (folder / _MARKER).read_text().strip() == stamp:
        return
    remove_tree(folder, owners={os.geteuid()})
    _ours(base, folder)
    present = {entry.name for entry in source.iterdir()} if source.is_dir() else set()
    have = frozenset(name[: -len(".control")] for name in present if name.endswith(".control"))
    features = ServerFeatures(have, icu=False, postgres=install.describe())
    for name in offered:
        if name in have:
            for file in present:
                if file == f"{name}.control" or (file.startswith(f"{name}--") and file.endswith(".sql")):
                    os.symlink(source / file, folder / file)
            continue
        message = extension_refusal(name, features) or ""
        write_private(folder / f"{name}.control", mode=0o644, data=(
            f"comment = '{STUB_COMMENT}'\ndefault_version = '{_STUB_VERSION}'\ntrusted = true\n"))
        write_private(folder / f"{name}--{_STUB_VERSION}.sql", _stub_script(message), mode=0o644)
    write_private(folder / _MARKER, stamp + "\n", mode=0o644)
