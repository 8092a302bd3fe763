"""Every path of a run directory, named once.

A stage reads earlier stages' artefacts and writes its own through these names; the stage
registries (`cai/stages.py`) say which stage owns which. Paths are relative to the run
directory (`output_dir`).

    manifest.json, config.yaml, <script>_config.yaml     the run: status per stage, resolved configs
    sl_data/        generate: critique-revision chains (JSONL shards), each revision gated
    sl_rejected/    generate: the chains with a revision the quality gates rejected, with reasons
    sl_data_card.md generate: accepted/rejected per gate, principle usage, examples
    sft_data/       sft: the examples fine-tuned on
    sl_model/       sft: the SL policy
    pairs/          sample: response pairs from the SL model
    preferences/    label: AI-feedback soft labels
    label_gold.jsonl  label: the labeler's answer on each gold pair (its accuracy is in the manifest)
    reward_model/   reward: the preference model
    rl_model/       policy: the RL policy (PPO, DPO, GRPO or RLOO)
    checkpoints/<stage>/, logs/<stage>.jsonl   trainer checkpoints and training curves
    eval/           eval: generations, scores, judgements, metrics.json
    report/         eval (or `python -m cai report`): report.md and plots
    pool.jsonl, helpful_pool.jsonl, pool_rounds/<kind>/  grow (Self-Instruct pools)

The policy stage was called `ppo` before it ran DPO, GRPO and RLOO too: `LEGACY_STAGE_NAMES`
maps old stage names onto new ones, and `existing()` finds an older run's `logs/ppo.jsonl` or
`checkpoints/ppo/`, so runs made before the rename resume and report as they did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.errors import CaiError

MANIFEST = "manifest.json"
CONFIG = "config.yaml"

SL_DATA = "sl_data"
SL_REJECTED = "sl_rejected"  # chains with a revision the quality gates turned down (for audit)
SL_DATA_CARD = "sl_data_card.md"
SFT_DATA = "sft_data"
SL_MODEL = "sl_model"
PAIRS = "pairs"
PREFERENCES = "preferences"
LABEL_GOLD = "label_gold.jsonl"  # the labeler's P(gold chosen) per gold pair, audited each label run
REWARD_MODEL = "reward_model"
RL_MODEL = "rl_model"

EVAL = "eval"
EVAL_GENERATIONS = f"{EVAL}/generations"
EVAL_SCORES = f"{EVAL}/scores"
EVAL_JUDGEMENTS = f"{EVAL}/judgements"
EVAL_REFUSAL_JUDGE = f"{EVAL}/refusal_judge"
EVAL_METRICS = f"{EVAL}/metrics.json"
EVAL_JUDGE_GOLD = f"{EVAL}/judge_gold.json"  # the pairwise judge on the gold set, kept so a rerun need not load it
REPORT = "report"

POOL_FILES = {"red_team": "pool.jsonl", "helpful": "helpful_pool.jsonl"}
ROUNDS = "pool_rounds"

# old stage name -> new one; a manifest written before the rename is read through this
LEGACY_STAGE_NAMES = {"ppo": "policy"}


def config_copy(script: str) -> str:
    return f"{script}_config.yaml"


def checkpoints(stage: str) -> str:
    return f"checkpoints/{stage}"


def log(stage: str) -> str:
    return f"logs/{stage}.jsonl"


def legacy_names(stage: str) -> list[str]:
    """The names `stage` had in older runs (e.g. `ppo` for `policy`)."""
    return [old for old, new in LEGACY_STAGE_NAMES.items() if new == stage]


def existing(root: Path, path: str, stage: str) -> Path:
    """`root/path`, or its pre-rename twin (`logs/ppo.jsonl` for `logs/policy.jsonl`) when only that exists."""
    current = root / path
    if current.exists():
        return current
    for old in legacy_names(stage):
        twin = root / path.replace(stage, old)
        if twin.exists():
            return twin
    return current


def policy_reference(config: Any) -> str:
    """The SL model to start from, with a clear error when the SL run has not produced it."""
    reference = config.policy_reference()
    if not config.model and not Path(reference).is_dir():
        raise CaiError(f"model: {reference} not found; run SL-CAI first (accelerate launch cai/sl.py --config ... output_dir={config.output_dir}) or set model= to an SL model")
    return reference


def sl_base_reference(config: Any, store: Any) -> str:
    """The model the SL run started from (the default feedback model), else the SL model itself."""
    return store.manifest().get("models", {}).get("policy") or policy_reference(config)
