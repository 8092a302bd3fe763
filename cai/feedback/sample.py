"""The RLAIF `sample` stage: several responses per prompt from the SL model, the pairs the feedback model labels.

With `feedback.method=contrastive` (RLCD, Yang et al. 2023) each prompt gets exactly two
responses, one under a harmless system instruction carrying a drawn preference principle and
one under its opposite (`cai.feedback.methods.contrastive_instructions`); the record's
`construction` says which response was the harmless one, so the label stage knows the
preferred side without judging. RLCD samples both from the base model; here the SL model
samples, as every other method's pairs are.

A model too small to decline when told to (SmolLM2-135M declines 0 of 24 red-team prompts under
any instruction, docs/sl_quality.md) gives two compliant answers and no contrast. With
`feedback.contrastive_openings` the harmless side of a red-team prompt is given the first words
of a decline (a critique principle's `revision_opening`), and a helpful prompt gets a plain
answer against a needless decline, so the reward model sees both what to refuse and what not to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.generation import ChatCompleter
from cai.layout import PAIRS, policy_reference
from cai.run_store import RunStore, check_same_inputs, run_chunked
from cai.supervised.chains import prompt_set_hash
from cai.supervised.stages import select_prompts


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
    if contrastive:
        from cai.feedback.methods import check_method, check_openings

        check_method(config.feedback, constitution)  # before the model loads
        if config.feedback.contrastive_openings:
            check_openings(config.feedback, constitution)
    prompts = select_prompts(config.prompts, config.seed)
    openings = contrastive and config.feedback.contrastive_openings
    construction = f"-contrastive-{constitution.content_hash}" + (f"-openings-{config.feedback.balance_principle}" if openings else "") if contrastive else ""
    check_same_inputs(store, stage="sample", records_dir=PAIRS, fingerprint=f"{prompt_set_hash(prompts)}-{count}{construction}")
    settings = dataclasses.replace(config.generation, temperature=config.sample.temperature)
    complete = ChatCompleter(policy_reference(config), settings, config.seed, accelerator, setting="model")

    def work(chunk: list[Any]) -> list[dict[str, Any]]:
        if contrastive:
            return contrastive_records(chunk, complete, constitution, config.seed, openings=openings, balance_principle=config.feedback.balance_principle)
        conversations = [[{"role": "user", "content": p.prompt}] for p in chunk for _ in range(count)]
        texts = complete(conversations, "sample")
        return [{"id": p.id, "prompt": p.prompt, "kind": p.kind, "category": p.category, "responses": texts[i * count : (i + 1) * count]} for i, p in enumerate(chunk)]

    records = run_chunked(store, stage="sample", records_dir=PAIRS, items=prompts, chunk_size=config.sample.chunk_size, work=work, accelerator=accelerator, tag="rl")
    identical = sum(len(set(r["responses"])) < len(r["responses"]) for r in records)
    store.mark_stage("sample", "done", prompts=len(records), responses=len(records) * count, prompts_with_identical_samples=identical, contrastive=contrastive)
    if accelerator.is_main_process:
        how = (" (contrastive: harmless vs harmful instruction" + (", decline openings written" if openings else "") + ")") if contrastive else ""
        print(f"[rl] sample: {len(records)} prompts x {count} responses{how} -> {store.stage_dir(PAIRS)}")
        if identical:
            print(f"[rl] sample: {identical} prompts got identical samples (raise sample.temperature for more contrast)")


def contrastive_records(chunk: list[Any], complete: Any, constitution: Any, seed: int, *, openings: bool = False, balance_principle: str | None = None) -> list[dict[str, Any]]:
    """Response 0 under the harmless instruction, response 1 under its opposite; `construction` records which.

    With `openings`, a response that was given its first words starts with them (`construction.openings`).
    """
    from cai.feedback.methods import contrastive_instructions
    from cai.supervised.chains import join_opening

    plans = [contrastive_instructions(constitution, seed, p, openings=openings, balance_principle=balance_principle) for p in chunk]
    conversations, starts = [], []
    for prompt, plan in zip(chunk, plans):
        for system, opening in ((plan.harmless, plan.harmless_opening), (plan.harmful, plan.harmful_opening)):
            conversations.append([{"role": "system", "content": system}, {"role": "user", "content": prompt.prompt}])
            starts.append(opening)
    texts = [join_opening(o, t) for o, t in zip(starts, complete(conversations, "sample (contrastive)", openings=starts))]
    records = []
    for i, (p, plan) in enumerate(zip(chunk, plans)):
        construction = {"harmless": 0, "principle_id": plan.principle_id, "instructions": [plan.harmless, plan.harmful]}
        if openings:
            construction["openings"] = [plan.harmless_opening, plan.harmful_opening]
        records.append({"id": p.id, "prompt": p.prompt, "kind": p.kind, "category": p.category, "responses": texts[2 * i : 2 * i + 2], "construction": construction})
    return records
