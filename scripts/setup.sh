#!/usr/bin/env bash
# Create (or reuse) .venv and install textvae into it. Run by the other
# scripts. torch is installed first and pinned so that pip takes the CPU
# build on this kind of machine instead of several GB of CUDA packages;
# set TORCH_SPEC to choose another build (e.g. a CUDA one on a GPU machine).
# pip's chatter goes to .venv/setup.log; on failure its end is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
LOG=.venv/setup.log
install() {
  if ! .venv/bin/python -m pip install --quiet "$@" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "textvae: error: pip install $* failed (full log: $LOG)" >&2
    exit 1
  fi
}
: >"$LOG"
.venv/bin/python -m pip install --quiet --upgrade pip >>"$LOG" 2>&1 || true
install "${TORCH_SPEC:-torch==2.13.0}"
install -e ".[test]"
echo "textvae: environment ready in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
