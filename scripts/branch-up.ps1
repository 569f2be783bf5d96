# A personal, migrated branch named after you and your git branch; writes .env.
#   ./scripts/branch-up.ps1            # in your project directory
#   ./scripts/branch-up.ps1 --ttl 2d   # any `cathouse-branch up` option passes through
$ErrorActionPreference = "Stop"

$cli = Get-Command cathouse-branch -ErrorAction SilentlyContinue
if ($cli) {
    & $cli.Source up @args
    exit $LASTEXITCODE
}
$python = if ($env:PYTHON) { $env:PYTHON } elseif ($env:VIRTUAL_ENV) { Join-Path $env:VIRTUAL_ENV "Scripts/python.exe" } else { "python" }
& $python -c "import cathouse_harness.cli.commands" 2>$null
if ($LASTEXITCODE -ne 0) {
    Write-Error "branch-up: cathouse-harness is not installed for $python (pip install -e <its checkout>: it is on no package index)"
    exit 2
}
& $python -m cathouse_harness up @args
exit $LASTEXITCODE
