#!/usr/bin/env bash
# Migrate every service of the project in the current directory, in configured order
# (auth-service -> catalog-service -> installation-service for Cat House).
#
#   cd examples/cathouse && ../../scripts/init-local-db.sh [--target head] [--url -]   (URL on stdin; a password never goes in argv)
#
# The database URL is MIGRATION_DATABASE_URL (the direct, non-pooled endpoint), from the
# environment or from ./.env. Extra arguments go to `python -m cathouse_harness migrate` (cathouse-branch migrate).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(dirname "$script_dir")"

# Which python: $PYTHON, else the active virtualenv's, else python3.
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    python="$VIRTUAL_ENV/bin/python"
else
    python="python3"
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "init-local-db: no python found (tried '$python'); set PYTHON or activate a venv" >&2
    exit 2
fi

# The URL may come from --url; otherwise it must be in the environment or ./.env.
has_url_argument=false
for argument in "$@"; do
    case "$argument" in
        --url|--url=*) has_url_argument=true ;;
    esac
done
if [[ "$has_url_argument" == false && -z "${MIGRATION_DATABASE_URL:-}" ]]; then
    if [[ ! -f .env ]] || ! grep -Eq '^[[:space:]]*(export[[:space:]]+)?MIGRATION_DATABASE_URL[[:space:]]*=[[:space:]]*[^[:space:]]' .env; then
        echo "init-local-db: MIGRATION_DATABASE_URL is not set (not in the environment, not in $(pwd)/.env); set it to the direct database URL" >&2
        exit 2
    fi
fi

# The folder harness/ is imported as cathouse_harness only once installed (package-dir),
# so a source checkout must be installed too: `pip install -e <checkout>`.
if ! "$python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('cathouse_harness.cli.commands') is None)" >/dev/null 2>&1; then
    echo "init-local-db: cathouse-harness is not installed for $python (pip install -e $repo_root, or set PYTHON to a python that has it)" >&2
    exit 2
fi

exec "$python" -m cathouse_harness migrate --project-dir . "$@"
