#!/usr/bin/env bash
# Run lint, then the test suite, inside the workspace environment (make test calls this).
# pytest's exit code is kept so .ci/run can tell "no tests collected" (5) from failures.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build/test-results
echo "==> ruff check"
ruff check . || exit 1
echo "==> pytest"
python -m pytest "$@"
code=$?
echo "$code" > build/test-results/pytest-exit-code
exit "$code"
