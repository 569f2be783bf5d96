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
answers for an extension it has no files for. PostgreSQL 15-17 have no such setting:
there, every extension of the installation stays available (a relocated copy of the
installation could filter them too; not done, see ARCHITECTURE.md "Compute per branch").
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cathouse_harness.local import locations
from cathouse_harness.local.neon_features import (
    NEON_EXTENSIONS,
    ServerFeatures,
    extension_refusal,
    extra_extensions,
)
from cathouse_harness.local.pg_choice import PgInstall
from cathouse_harness.support.safe_paths import ensure_dir, remove_tree, write_private

SETTING = "extension_control_path"
STUB_COMMENT = "cathouse-harness: offered by Neon, not installed in this PostgreSQL"
_STUB_VERSION = "0"
_MARKER = ".cathouse-extensions"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def supported(install: PgInstall) -> bool:
    return int(install.major) >= 18


def share_dir(install: PgInstall) -> Path:
    """The installation's share directory, as its own pg_config computes it (relocated
    for the wheel; /usr/share/postgresql/<major> for Debian's)."""
    pg_config = install.bin_dir / "pg_config"
    try:
        found = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                               check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    return Path(found) if found else install.root / "share"


def _stub_script(message: str) -> str:
    tag = "$cathouse_refusal$"
    assert tag not in message  # a dollar-quoted literal ends at its tag
    # plpgsql is in every database initdb makes; the RAISE aborts CREATE EXTENSION
    return f"DO $cathouse$ BEGIN RAISE EXCEPTION USING MESSAGE = {tag}{message}{tag}; END $cathouse$;\n"


def prepare(root: Path, install: PgInstall) -> dict[str, str]:
    """Make `root`/extension for `install` (again when Neon's list or the extras
    changed); the setting that points the instances at it, or {} before PostgreSQL 18."""
    if not supported(install):
        return {}
    # a name becomes a file name here: only what an extension's name can be
    offered = sorted(name for name in NEON_EXTENSIONS | extra_extensions() if _NAME.fullmatch(name))
    folder = root / "extension"
    stamp = locations.short_hash(f"{install.root.resolve()}|{install.version}|{' '.join(offered)}")
    if (folder / _MARKER).is_file() and (folder / _MARKER).read_text().strip() == stamp:
        return {SETTING: str(root)}
    source = share_dir(install) / "extension"
    remove_tree(folder, owners={os.geteuid()})
    for made in (root.parent, root):  # ours, readable by the instances' user
        ensure_dir(made, mode=0o755, owners={os.geteuid()})
    ensure_dir(folder, mode=0o755, owners={os.geteuid()})
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
    return {SETTING: str(root)}
