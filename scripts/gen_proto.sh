#!/usr/bin/env bash
# Regenerate dfs/_proto/ from proto/dfs/v1/*.proto by hand.
# Uses the repo's .venv if present (grpcio-tools is installed there by
# bootstrap only as a build dependency, so it is installed on demand).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import grpc_tools' 2>/dev/null; then
  "$PY" -m pip install -q 'grpcio-tools==1.85.1'
fi
exec "$PY" scripts/gen_proto.py "$@"
