#!/usr/bin/env bash
# Set up and run the default test suite (long tests are marked `slow` and
# left out; run them with `.venv/bin/python -m pytest -m slow`).
# pytest exits 5 when it collected no test: that fails here like any error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
