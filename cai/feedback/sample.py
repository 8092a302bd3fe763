"""The RLAIF `sample` stage: several responses per prompt from the SL model, the pairs the feedback model labels.

With `feedback.method=contrastive` (RLCD, Yang et al. 2023) each prompt gets exactly two
responses, one under a harmless system instruction carrying a drawn preference principle and
one under its opposite (`cai.feedback.methods.contrastive_instructions`); the record's
`construction` says which response was the harmless one, so the label stage knows the
preferred side without judging. RLCD samples both from the base model; here the SL model
samples, as every other method's pairs are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cai.config import GenerationConfig, RLRunConfig
from cai.errors import CaiError
from cai.layout import PAIRS, policy_reference
from cai.run_store import RunStore, check_same_inputs, run_chunked
from cai.supervised.chains import prompt_set_hash
from cai.supervised.stages import select_prompts


def chat_completer(reference: str, settings: GenerationConfig, seed: int, accelerator: Any, *, setting: str):
    """A `complete(list[messages], desc) -> list[str]` for one model, sharded over processes."""
    from cai import models
    from cai.generation import build_generator, generate_sharded, render_chat

    ref = models.resolve(reference, setting=setting)
    tokenizer = models.load_tokenizer(ref)
    model = None
    if settings.backend == "transformers":
        model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
        models.sync_pad_token(model, tokenizer)
    generator = build_generator(model, tokenizer, settings, model_path=ref.path, seed=seed, accelerator=accelerator)

    def complete(conversations: list[list[dict[str, str]]], desc: str) -> list[str]:
        return generate_sharded(generator, [render_chat(tokenizer, messages) for messages in conversations], accelerator, desc=desc)

    return complete


def run_sample(config: RLRunConfig, store: RunStore, accelerator: Any, constitution: Any = None) -> None:
    """For each prompt, `responses_per_prompt` samples from the SL model, seeded per (prompt, sample)."""
    count = config.sample.responses_per_prompt
    contrastive = config.feedback.method == "contrastive"
    if count < 2:
        raise CaiError(f"sample.responses_per_prompt: need at least 2 responses to compare, got {count}")
    if contrastive and count != 2:
        raise CaiError(f"sample.responses_per_prompt: feedback.method=contrastive samples exactly one harmless and one harmful response per prompt, got {count}; set sample.responses_per_prompt=2")
    if contrastive and constitution is None:
        raise ValueError("run_sample: feedback.method=contrastive needs the constitution")
    prompts = select_prompts(config.prompts, config.seed)
    check_same_inputs(store, stage="sample", records_dir=PAIRS, fingerprint=f"{prompt_set_hash(prompts)}-{count}" + (f"-contrastive-{constitution.content_hash}" if contrastive else ""))
    settings = dataclasses.replace(config.generation, temperature=config.sample.temperature)
    complete = chat_completer(policy_reference(config), settings, config.seed, accelerator, setting="model")

    def work(chunk: list[Any]) -> list[dict[str, Any]]:
        if contrastive:
            return contrastive_records(chunk, complete, constitution, config.seed)
        conversations = [[{"role": "user", "content": p.prompt}] for p in chunk for _ in range(count)]
        texts = complete(conversations, "sample")
        return [{"id": p.id, "prompt": p.prompt, "kind": p.kind, "category": p.category, "responses": texts[i * count : (i + 1) * count]} for i, p in enumerate(chunk)]

    records = run_chunked(store, stage="sample", records_dir=PAIRS, items=prompts, chunk_size=config.sample.chunk_size, work=work, accelerator=accelerator, tag="rl")
    identical = sum(len(set(r["responses"])) < len(r["responses"]) for r in records)
    store.mark_stage("sample", "done", prompts=len(records), responses=len(records) * count, prompts_with_identical_samples=identical, contrastive=contrastive)
    if accelerator.is_main_process:
        how = " (contrastive: harmless vs harmful instruction)" if contrastive else ""
        print(f"[rl] sample: {len(records)} prompts x {count} responses{how} -> {store.stage_dir(PAIRS)}")
        if identical:
            print(f"[rl] sample: {identical} prompts got identical samples (raise sample.temperature for more contrast)")


def contrastive_records(chunk: list[Any], complete: Any, constitution: Any, seed: int) -> list[dict[str, Any]]:
    """Response 0 under the harmless instruction, response 1 under its opposite; `construction` records which."""
    from cai.feedback.methods import contrastive_instructions

    plans = [contrastive_instructions(constitution, seed, p.id) for p in chunk]
    conversations = []
    for prompt, plan in zip(chunk, plans):
        for system in (plan.harmless, plan.harmful):
            conversations.append([{"role": "system", "content": system}, {"role": "user", "content": prompt.prompt}])
    texts = complete(conversations, "sample (contrastive)")
    return [
        {
            "id": p.id,
            "prompt": p.prompt,
            "kind": p.kind,
            "category": p.category,
            "responses": texts[2 * i : 2 * i + 2],
            "construction": {"harmless": 0, "principle_id": plan.principle_id, "instructions": [plan.harmless, plan.harmful]},
        }
        for i, (p, plan) in enumerate(zip(chunk, plans))
    ]
