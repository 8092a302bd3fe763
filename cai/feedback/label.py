"""The `label` stage: every pair in `pairs/` judged by the feedback model into `preferences/`.

The judging itself is `cai.feedback.methods` (`feedback.method`: multiple_choice, contrastive,
pointwise or likelihood_ratio); this module runs it chunk by chunk, resumably, and writes the
records and the manifest entry. Then the same labeler answers the gold preference set
(`feedback.gold`, `cai.feedback.gold`): its accuracy with a 95% interval, per kind, position
bias and calibration go into the manifest (`stages.label.gold`), `label_gold.jsonl` and the
stage's output line, so every run says whether its labels mean anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from cai.config import RLRunConfig
from cai.constitution import Constitution
from cai.errors import CaiError
from cai.feedback.judge import (
    Comparison,
    Judgement,
    check_settings,
    comparisons_from_pairs,
    preference_record,
)
from cai.feedback.methods import ORDER_FREE, check_method, contrastive_probability, label_comparisons
from cai.fingerprint import fingerprint as content_fingerprint
from cai.run_store import RunStore


def chunk_stats(judgements: Sequence[Judgement], kept: Sequence[bool]) -> dict[str, Any]:
    """What the manifest reports, per chunk, so totals survive a resume without re-scoring."""
    from cai.feedback.preference_math import position_bias

    raw = [v.p_a for j in judgements for v in j.votes]
    bias = position_bias(raw if raw else [0.5])
    return {
        "comparisons": len(judgements),
        "kept": int(sum(kept)),
        "truncated": int(sum(j.truncated for j in judgements)),
        "votes": bias.count,
        "first_preferred": bias.first_preferred_share * bias.count,
        "sum_p_first_shown": bias.mean_p_first * bias.count,
        "sum_abs_margin": float(sum(abs(j.p_first - 0.5) for j in judgements)),
    }


def run_label(config: RLRunConfig, store: RunStore, accelerator: Any, constitution: Constitution) -> None:
    """Label every pair from `pairs/` into `preferences/`, chunk by chunk, resumably."""
    from cai import models
    from cai.feedback.preference_math import drop_near_ties
    from cai.layout import LABEL_GOLD, PAIRS, PREFERENCES, sl_base_reference
    from cai.run_store import check_same_inputs, chunked, run_chunked

    settings = config.feedback
    check_settings(settings)
    check_method(settings, constitution)
    pairs = store.require_stage("sample", needed_by="label", records=PAIRS)
    if settings.method == "contrastive":
        unconstructed = [p["id"] for p in pairs if "construction" not in p]
        if unconstructed:
            raise CaiError(f"{store.stage_dir(PAIRS)}: pair {unconstructed[0]!r} was not sampled contrastively (no construction); rerun sample with feedback.method=contrastive and force=true")
    comparisons, identical = comparisons_from_pairs(pairs)
    if not comparisons:
        raise CaiError(f"{store.stage_dir(PAIRS)}: every response pair is identical, nothing to label; raise sample.temperature and rerun sample with force=true")
    reference = settings.model or sl_base_reference(config, store)
    check_same_inputs(store, stage="label", records_dir=PREFERENCES, fingerprint=fingerprint(comparisons, reference, config, constitution))
    if not store.done_shards(PREFERENCES):  # a fresh start: forget counts of an older attempt
        store.update_manifest(lambda m: m["stages"]["label"].pop("chunk_stats", None))
    ref = models.resolve(reference, setting="feedback.model" if settings.model else "model")
    tokenizer = models.load_tokenizer(ref, padding_side="left")
    model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
    models.sync_pad_token(model, tokenizer)
    chunks = chunked(comparisons, settings.chunk_size)
    chunk_of = {c.id: n for n, chunk in enumerate(chunks) for c in chunk}

    constructed = {p["id"]: p["construction"] for p in pairs if "construction" in p}

    def work(chunk: list[Comparison]) -> list[dict[str, Any]]:
        if settings.method == "contrastive":
            judgements = contrastive_judgements(chunk, constructed, settings, lambda c: label_comparisons(model, tokenizer, c, constitution, settings, accelerator, seed=config.seed, generation=config.generation))
        else:
            judgements = label_comparisons(model, tokenizer, chunk, constitution, settings, accelerator, seed=config.seed, generation=config.generation)
        kept = drop_near_ties([j.p_first for j in judgements], settings.min_confidence).tolist()
        stats = chunk_stats(judgements, kept)
        # written before the shard: a kill in between redoes the chunk and rewrites the same numbers
        store.update_manifest(lambda m: m["stages"]["label"].setdefault("chunk_stats", {}).update({str(chunk_of[chunk[0].id]): stats}))
        return [{**preference_record(c, j), "method": settings.method} for c, j, keep in zip(chunk, judgements, kept) if keep]

    records = run_chunked(store, stage="label", records_dir=PREFERENCES, items=comparisons, chunk_size=settings.chunk_size, work=work, accelerator=accelerator, tag="rl")
    if not records:
        raise CaiError(
            f"{store.stage_dir(PREFERENCES)}: all {len(comparisons)} labels are within feedback.min_confidence={settings.min_confidence} of 0.5, "
            "nothing to train on; lower feedback.min_confidence or use a stronger feedback.model, then rerun label with force=true"
        )
    if all(r["p_chosen"] == 0.5 for r in records):
        raise CaiError(f"{store.stage_dir(PREFERENCES)}: every label is exactly 0.5 (the feedback model cannot tell the responses apart), nothing to train on; use another feedback.model, or set feedback.min_confidence above 0 to drop ties")
    gold = audit_gold(model, tokenizer, constitution, config, store, accelerator, reference=reference) if settings.gold else None
    if not accelerator.is_main_process:  # the main process alone reads the counts back and closes the stage
        return
    per_chunk = store.stage_info("label").get("chunk_stats", {})
    totals = {key: sum(per_chunk[str(n)][key] for n in range(len(chunks))) for key in per_chunk["0"]}
    info = {
        "comparisons": len(comparisons),
        "preferences": len(records),
        "dropped_near_ties": len(comparisons) - len(records),
        "min_confidence": settings.min_confidence,
        "identical_pairs_skipped": identical,
        "truncated": totals["truncated"],
        "position_bias": None
        if settings.method in ORDER_FREE or settings.method == "contrastive"
        else {
            "first_preferred_share": totals["first_preferred"] / totals["votes"],
            "mean_p_first": totals["sum_p_first_shown"] / totals["votes"],
            "votes": totals["votes"],
        },
        "mean_abs_p_minus_half": totals["sum_abs_margin"] / len(comparisons),
        "feedback_model": reference,
        "method": settings.method,
        "gold": gold,
        "principles_per_comparison": settings.principles_per_comparison,
        "ensemble": settings.ensemble,
        "debias_positions": settings.debias_positions,
        "chain_of_thought": settings.chain_of_thought,
    }

    def finish(manifest: dict[str, Any]) -> None:
        manifest["stages"]["label"].pop("chunk_stats", None)
        manifest.setdefault("models", {})["feedback_model"] = reference

    store.update_manifest(finish)
    store.mark_stage("label", "done", **info)
    bias = info["position_bias"]
    order = f"first shown preferred {bias['first_preferred_share']:.0%} before debiasing" if bias else "order-free (no position to be biased by)"
    print(
        f"[rl] label: {len(records)} preferences from {len(comparisons)} comparisons by {settings.method} ({info['dropped_near_ties']} near-ties dropped), "
        f"mean |p-0.5| {info['mean_abs_p_minus_half']:.3f}, {order} -> {store.stage_dir(PREFERENCES)}"
    )
    if gold:
        from cai.feedback.gold import describe

        if settings.method == "contrastive":  # the labels come from construction; the audit is of the judge of everything else
            judge = f"their judge ({gold['method']}, for eval comparisons)"
            print(f"[rl] label: labels by construction (gold pairs have none); {describe(gold, who=judge, subject='its verdicts')} ({settings.gold}; per pair: {store.root / LABEL_GOLD})")
        else:
            print(f"[rl] label: {describe(gold)} ({settings.gold}; per pair: {store.root / LABEL_GOLD})")
    else:
        print("[rl] label: no gold audit (feedback.gold=null): nothing says whether these labels are right")


def contrastive_judgements(chunk: Sequence[Comparison], constructed: dict[str, dict[str, Any]], settings: Any, judge_pairs: Any) -> list[Judgement]:
    """RLCD labels: the harmless-instruction side wins by construction; the judge's p only where it agrees."""
    from cai.feedback.judge import Judgement

    asked = judge_pairs(chunk) if settings.contrastive_judge else [None] * len(chunk)
    judgements = []
    for comparison, judged in zip(chunk, asked):
        prompt_id, _, indices = comparison.id.rpartition(":")
        first_index = int(indices.split("-")[0])
        construction = constructed[prompt_id]
        first_harmless = first_index == construction["harmless"]
        p_first = contrastive_probability(first_harmless, judged.p_first if judged else None, settings)
        votes = judged.votes if judged else ()
        judgements.append(Judgement(comparison.id, p_first, (construction["principle_id"],), votes, judged.truncated if judged else False))
    return judgements


def audit_gold(model: Any, tokenizer: Any, constitution: Constitution, config: RLRunConfig, store: RunStore, accelerator: Any, *, reference: str) -> dict[str, Any]:
    """The labeler on the gold set: metrics for the manifest, one record per pair in `label_gold.jsonl`."""
    import json

    from cai.feedback.gold import audit_key, audit_labeler, gold_sample, read_gold
    from cai.feedback.methods import judging_method
    from cai.layout import LABEL_GOLD
    from cai.run_store import atomic_write_text

    settings = config.feedback
    pairs = gold_sample(read_gold(settings.gold), settings.gold_pairs, config.seed)
    metrics, records = audit_labeler(lambda c: label_comparisons(model, tokenizer, c, constitution, settings, accelerator, seed=config.seed, generation=config.generation), pairs, method=judging_method(settings))
    metrics["gold_set"] = settings.gold
    metrics["audit_key"] = audit_key(pairs, reference, settings, constitution, config.seed)  # lets the eval judge reuse this audit
    if settings.method == "contrastive":
        metrics["note"] = f"contrastive labels come from construction; gold pairs have none, so this audits feedback.contrastive_judge ({settings.contrastive_judge or 'likelihood_ratio'}), the judge of eval comparisons"
    if accelerator.is_main_process:
        atomic_write_text(store.root / LABEL_GOLD, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return metrics


def fingerprint(comparisons: Sequence[Comparison], reference: str, config: RLRunConfig, constitution: Constitution) -> str:
    """What the shards depend on; batch_size is left out so a resume may lower it (e.g. after OOM)."""
    settings: dict[str, Any] = {k: v for k, v in dataclasses.asdict(config.feedback).items() if k not in ("batch_size", "gold")}
    if config.feedback.chain_of_thought:
        settings["decoding"] = dataclasses.asdict(dataclasses.replace(config.generation, batch_size=0))
    payload = [[dataclasses.astuple(c) for c in comparisons], reference, settings, constitution.content_hash, config.seed]
    return content_fingerprint(payload, ensure_ascii=False)
