"""The RLAIF `sample` stage, and what every RL stage shares: where the SL model and records live."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cai import models
from cai.config import RLRunConfig
from cai.critique import prompt_set_hash
from cai.errors import CaiError
from cai.run_store import RunStore, check_same_inputs, run_chunked
from cai.sl_stages import generation_function, select_prompts

PAIRS = "pairs"
PREFERENCES = "preferences"
REWARD_MODEL = "reward_model"
RL_MODEL = "rl_model"
# stage -> the outputs it owns (set aside, never deleted, when the stage is forced)
STAGES = {
    "sample": [PAIRS],
    "label": [PREFERENCES],
    "reward": [REWARD_MODEL, "checkpoints/reward", "logs/reward.jsonl"],
    "ppo": [RL_MODEL, "checkpoints/ppo", "logs/ppo.jsonl"],
    "eval": ["eval", "report"],
}


def policy_reference(config: RLRunConfig) -> str:
    """The SL model to start from, with a clear error when the SL run has not produced it."""
    reference = config.policy_reference()
    if not config.model and not Path(reference).is_dir():
        raise CaiError(
            f"model: {reference} not found; run SL-CAI first (accelerate launch cai/sl.py --config ... "
            f"output_dir={config.output_dir}) or set model= to an SL model"
        )
    return reference


def sl_base_reference(config: RLRunConfig, store: RunStore) -> str:
    """The model the SL run started from (the default feedback model), else the SL model itself."""
    return store.manifest().get("models", {}).get("policy") or policy_reference(config)


def run_sample(config: RLRunConfig, store: RunStore, accelerator: Any) -> None:
    """For each prompt, `responses_per_prompt` samples from the SL model, seeded per (prompt, sample)."""
    count = config.sample.responses_per_prompt
    if count < 2:
        raise CaiError(f"sample.responses_per_prompt: need at least 2 responses to compare, got {count}")
    prompts = select_prompts(config.prompts, config.seed)
    check_same_inputs(store, stage="sample", records_dir=PAIRS, fingerprint=f"{prompt_set_hash(prompts)}-{count}")
    settings = dataclasses.replace(config.generation, temperature=config.sample.temperature)
    complete = generation_function(policy_reference(config), settings, config.seed, accelerator, setting="model")

    def work(chunk: list[Any]) -> list[dict[str, Any]]:
        conversations = [[{"role": "user", "content": p.prompt}] for p in chunk for _ in range(count)]
        texts = complete(conversations, "sample")
        return [
            {"id": p.id, "prompt": p.prompt, "kind": p.kind, "category": p.category, "responses": texts[i * count : (i + 1) * count]}
            for i, p in enumerate(chunk)
        ]

    records = run_chunked(store, stage="sample", records_dir=PAIRS, items=prompts, chunk_size=config.sample.chunk_size, work=work, accelerator=accelerator, tag="rl")
    identical = sum(len(set(r["responses"])) < len(r["responses"]) for r in records)
    store.mark_stage("sample", "done", prompts=len(records), responses=len(records) * count, prompts_with_identical_samples=identical)
    if accelerator.is_main_process:
        print(f"[rl] sample: {len(records)} prompts x {count} responses -> {store.stage_dir(PAIRS)}")
        if identical:
            print(f"[rl] sample: {identical} prompts got identical samples (raise sample.temperature for more contrast)")
