"""The RLAIF `sample` stage: several responses per prompt from the SL model, the pairs the feedback model labels."""

from __future__ import annotations

import dataclasses
from typing import Any

from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.layout import PAIRS, policy_reference
from cai.run_store import RunStore, check_same_inputs, run_chunked
from cai.supervised.chains import prompt_set_hash
from cai.supervised.stages import generation_function, select_prompts


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
        return [{"id": p.id, "prompt": p.prompt, "kind": p.kind, "category": p.category, "responses": texts[i * count : (i + 1) * count]} for i, p in enumerate(chunk)]

    records = run_chunked(store, stage="sample", records_dir=PAIRS, items=prompts, chunk_size=config.sample.chunk_size, work=work, accelerator=accelerator, tag="rl")
    identical = sum(len(set(r["responses"])) < len(r["responses"]) for r in records)
    store.mark_stage("sample", "done", prompts=len(records), responses=len(records) * count, prompts_with_identical_samples=identical)
    if accelerator.is_main_process:
        print(f"[rl] sample: {len(records)} prompts x {count} responses -> {store.stage_dir(PAIRS)}")
        if identical:
            print(f"[rl] sample: {identical} prompts got identical samples (raise sample.temperature for more contrast)")
