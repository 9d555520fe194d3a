#!/usr/bin/env bash
# Run the test suite: bootstrap, then pytest (testpaths = tests from
# pyproject.toml unless paths are given). Extra args go to pytest, e.g.
#   bash scripts/test.sh tests/unit -k checksum
#   bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest -x -q -p no:cacheprovider --timeout=600 "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; treating as failure" >&2
fi
exit $rc
