"""The database and role `cathouse-branch init` proposes: the ones the project itself
names, else Neon's for a new project.

Left unset, a user's project would get the harness's own defaults, which are the Cat House
example's names (`cathouse`, `cathouse_owner`): names no Neon project of theirs has. A
PostgreSQL URL the project keeps (an alembic.ini's `sqlalchemy.url`, a `.env`-style file)
says which database and role its migrations run as; without one, `neondb` owned by
`neondb_owner` is what Neon's create-project (and the embedded default's) makes.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cathouse_harness.cli.project_env import ENV_FILE, env_file_assignments, walk_files

NEON_DATABASE = "neondb"
NEON_ROLE = "neondb_owner"
_URL = re.compile(r"""(postgres(?:ql)?(?:\+[a-z0-9]+)?://[^\s'"]+)""")
# alembic init's placeholder (`driver://user:pass@localhost/dbname`) is not a database
_PLACEHOLDER_DATABASES = frozenset({"dbname"})


@dataclass(frozen=True)
class NamesProposal:
    database: str
    role: str
    where: str  # where they came from, for the note on stderr

    def note(self) -> str:
        return f"database {self.database!r}, role {self.role!r}: {self.where}"


def propose_names(
    project_dir: Path, alembic_configs: Sequence[Path], skip: Callable[[Path, str], bool]
) -> NamesProposal:
    for names in _from_urls(project_dir, alembic_configs, skip):
        return names
    return NamesProposal(
        NEON_DATABASE, NEON_ROLE,
        "no PostgreSQL URL in the project names its own; Neon's names for a new project",
    )


def _from_urls(
    project_dir: Path, alembic_configs: Sequence[Path], skip: Callable[[Path, str], bool]
) -> Iterator[NamesProposal]:
    # the migrations' own URL first: it is the database the services' schemas live in
    for config in alembic_configs:
        if config.suffix == ".ini":
            yield from _names(_ini_url(config), config, project_dir, "sqlalchemy.url")
    for path in walk_files(project_dir, skip):
        if ENV_FILE.match(path.name):
            for number, _, value in env_file_assignments(path):
                if _URL.fullmatch(value):
                    yield from _names(value, path, project_dir, f"line {number}")


def _ini_url(path: Path) -> str | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    url = parser.get("alembic", "sqlalchemy.url", fallback=None)
    return url if url and _URL.fullmatch(url.strip()) else None


def _names(url: str | None, path: Path, project_dir: Path, place: str) -> Iterator[NamesProposal]:
    if not url or "%(" in url or "${" in url:
        return
    parts = urlsplit(url.strip())
    database = unquote(parts.path.lstrip("/"))
    role = unquote(parts.username or "")
    if database and role and "/" not in database and database not in _PLACEHOLDER_DATABASES:
        shown = path.relative_to(project_dir).as_posix() if path.is_relative_to(project_dir) else str(path)
        # the password is never read out of the URL, only the names around it
        yield NamesProposal(database, role, f"the URL in {shown} ({place})")


def embedded_project_note(names: NamesProposal) -> str | None:
    """A line when the embedded default's running project has other names: a home holds
    one project, made with the names of its first client (the example's, after the quick
    start), and a project naming others is refused there until it gets a home of its own."""
    from cathouse_harness.config.settings import default_home
    from cathouse_harness.errors import HarnessError
    from cathouse_harness.local.discovery import running_server
    from cathouse_harness.support import env

    home = Path(env.read("CATHOUSE_HARNESS_HOME") or default_home()).expanduser()
    if not home.is_dir():  # init creates nothing; no home, no project yet
        return None
    try:
        info = running_server(home)
    except HarnessError:
        return None
    if info is None or info.databases is None or info.roles is None:
        return None
    if names.database in info.databases and names.role in info.roles:
        return None
    return (
        f"note: the embedded default's project in {home} has database(s) {', '.join(info.databases)} "
        f"and role(s) {', '.join(info.roles)} (a home keeps the names of its first client): with "
        f"{names.database!r} / {names.role!r}, run this project with CATHOUSE_HARNESS_HOME set to "
        "a home of its own, or configure those names"
    )
