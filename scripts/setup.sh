#!/usr/bin/env bash
# Create (or reuse) .venv and install textvae into it. Sourced by the other
# scripts. torch is installed first and pinned so that pip takes the CPU
# build on this kind of machine instead of several GB of CUDA packages;
# set TORCH_SPEC to choose another build (e.g. a CUDA one on a GPU machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test]"
