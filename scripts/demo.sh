#!/usr/bin/env bash
# The main job on a fresh machine: set up, then SL-CAI -> RLAIF on the embedded SmolLM2-135M,
# on CPU, ending with the report (runs/demo/report/report.md). Re-running skips finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  cai/sl.py --config configs/demo/sl.yaml "$@"
accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  cai/rl.py --config configs/demo/rl.yaml "$@"
