#!/usr/bin/env bash
# Bootstrap, then run `dfs demo` (args are passed through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dfs demo "$@"
