# Migrate every service of the project in the current directory, in configured order
# (auth-service -> catalog-service -> installation-service for Cat House).
#
#   cd examples\cathouse; ..\..\scripts\init-local-db.ps1 [--target head] [--url -]   (URL on stdin; a password never goes in argv)
#
# The database URL is MIGRATION_DATABASE_URL (the direct, non-pooled endpoint), from the
# environment or from .\.env. Extra arguments go to `python -m cathouse_harness migrate` (cathouse-branch migrate).
$ErrorActionPreference = 'Stop'

$repoRoot = Split-Path -Parent $PSScriptRoot

# Which python: $env:PYTHON, else the active virtualenv's, else python.
if ($env:PYTHON) {
    $python = $env:PYTHON
} elseif ($env:VIRTUAL_ENV -and (Test-Path (Join-Path $env:VIRTUAL_ENV 'Scripts\python.exe'))) {
    $python = Join-Path $env:VIRTUAL_ENV 'Scripts\python.exe'
} else {
    $python = 'python'
}
if (-not (Get-Command $python -ErrorAction SilentlyContinue)) {
    [Console]::Error.WriteLine("init-local-db: no python found (tried '$python'); set PYTHON or activate a venv")
    exit 2
}

$hasUrlArgument = $false
foreach ($argument in $args) {
    if ($argument -eq '--url' -or "$argument".StartsWith('--url=')) { $hasUrlArgument = $true }
}
if (-not $hasUrlArgument -and -not $env:MIGRATION_DATABASE_URL) {
    $inDotenv = (Test-Path '.env') -and
        (Select-String -Path '.env' -Pattern '^\s*(export\s+)?MIGRATION_DATABASE_URL\s*=\s*\S' -Quiet)
    if (-not $inDotenv) {
        [Console]::Error.WriteLine("init-local-db: MIGRATION_DATABASE_URL is not set (not in the environment, not in $((Get-Location).Path)\.env); set it to the direct database URL")
        exit 2
    }
}

# The folder harness/ is imported as cathouse_harness only once installed (package-dir),
# so a source checkout must be installed too: `pip install -e <checkout>`.
& $python -c "import importlib.util as u, sys; sys.exit(u.find_spec('cathouse_harness.cli.commands') is None)" 2>$null | Out-Null
if ($LASTEXITCODE -ne 0) {
    [Console]::Error.WriteLine("init-local-db: cathouse-harness is not installed for $python (pip install -e $repoRoot, or set PYTHON to a python that has it)")
    exit 2
}

& $python -m cathouse_harness migrate --project-dir . @args
exit $LASTEXITCODE
