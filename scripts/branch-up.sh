#!/usr/bin/env bash
# A personal, migrated branch for whoever runs this, named after them and their git
# branch, with DATABASE_URL and MIGRATION_DATABASE_URL written to ./.env (mode 0600).
#   scripts/branch-up.sh            # in your project (the directory with pyproject.toml)
#   scripts/branch-up.sh --ttl 2d   # any `cathouse-branch up` option passes through
set -euo pipefail

if command -v cathouse-branch >/dev/null 2>&1; then
  exec cathouse-branch up "$@"
fi
PYTHON="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PYTHON="$VIRTUAL_ENV/bin/python"
fi
if ! "$PYTHON" -c "import cathouse_harness.cli.commands" >/dev/null 2>&1; then
  echo "branch-up: cathouse-harness is not installed for $PYTHON (pip install -e <its checkout>: it is on no package index)" >&2
  exit 2
fi
exec "$PYTHON" -m cathouse_harness up "$@"
