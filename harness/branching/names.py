"""The names the harness gives its branches, all under `harness/`.

`harness/<run>/<worker>` for a test session, `harness/template/<parent>/<fingerprint>`
for a migrated template (`.building` while it is built), `harness/dev/<name>` for a
developer's branch (`cathouse-branch up`).
"""

from __future__ import annotations

import getpass
import re

from cathouse_harness.errors import ConfigError

NAME_PREFIX = "harness/"
# an unclaimed spare's names (`cathouse_harness.branching.spares`); a claim renames it
SPARE_PREFIX = f"{NAME_PREFIX}spare/"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\-/]+")


def clean_name_part(text: str) -> str:
    cleaned = _SAFE_NAME.sub("-", text).strip("-/")
    return cleaned[:60] or "x"


def session_branch_name(run_id: str, worker: str) -> str:
    return f"{NAME_PREFIX}{clean_name_part(run_id)}/{clean_name_part(worker)}"


def owners_name(name: str, owner: str) -> str:
    """`name` with the random part of `owner`'s token: the name a run forks under when
    another run given the same run id (a CI matrix sharing one) holds the plain one."""
    return f"{name}-{owner.rsplit('-', 1)[-1]}"


def run_prefix(run_id: str) -> str:
    return f"{NAME_PREFIX}{clean_name_part(run_id)}/"


def template_branch_name(fingerprint: str, parent: str, *, schema_only: bool = False) -> str:
    flavour = "-schema" if schema_only else ""
    return f"{NAME_PREFIX}template/{clean_name_part(parent)}/{fingerprint}{flavour}"


def building_name(template_name: str) -> str:
    return f"{template_name}.building"


def dev_branch_name(user: str | None = None, git_branch: str | None = None) -> str:
    user = user or _safe_user()
    parts = [clean_name_part(user)]
    if git_branch:
        parts.append(clean_name_part(git_branch))
    return f"{NAME_PREFIX}dev/{'-'.join(parts)}"


def dev_name_for(given: str) -> str:
    """The name `cathouse-branch up --name <given>` gives its branch: `harness/dev/<given>`,
    or `given` itself when it already carries the harness prefix."""
    if given.startswith(f"{NAME_PREFIX}dev/"):
        return given
    if given.startswith(NAME_PREFIX):
        raise ConfigError(
            f"{given!r} names a branch the harness keeps for itself (templates, test sessions)",
            key="--name", hint=f"give a plain name; the branch becomes {NAME_PREFIX}dev/<name>",
        )
    return f"{NAME_PREFIX}dev/{clean_name_part(given)}"


def given_name_candidates(given: str) -> tuple[str, ...]:
    if given.startswith(NAME_PREFIX):
        return (given,)
    if given.startswith("br-"):  # an id first; `up --name br-x` is unusual but allowed
        return (given, dev_name_for(given))
    # the short name first: a branch literally called `given` outside harness/ is one the
    # harness would refuse to touch anyway, so the short form is what a person means
    return (dev_name_for(given), given)


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "developer"
