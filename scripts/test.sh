#!/usr/bin/env bash
# Set up (if needed), lint, type-check (mypy), and run the tests in two processes (pytest-xdist).
#   bash scripts/test.sh           the whole suite (what CI runs)
#   bash scripts/test.sh --fast    the inner loop: -m "not slow", still every command end to end
# Other arguments go to pytest (-k certify, -x, ...); ANCER_TEST_WORKERS=0 runs in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then
    pytest_args+=(-m "not slow")
  else
    pytest_args+=("$arg")
  fi
done
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -n "${ANCER_TEST_WORKERS:-2}" ${pytest_args[@]+"${pytest_args[@]}"}
