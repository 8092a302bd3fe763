"""The `reward` stage: a reward model trained on the AI labels, checked on a held-out split and on the gold set.

Held-out accuracy only measures agreement with the labeler; the gold set (`feedback.gold`)
measures whether the reward model prefers what people prefer, with the score-length
correlation on gold responses beside it (their lengths do not predict the gold answer).

Loading, scoring and the soft-label trainer are `cai.reward.model`; this module runs the stage.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from cai import layout, models
from cai.chat_format import response_ids, scored_ids
from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.fingerprint import fingerprint as content_fingerprint
from cai.layout import PREFERENCES, REWARD_MODEL, policy_reference
from cai.reward.model import (
    LENGTH_SLOPE,
    PreferencePair,
    build_reward_trainer,
    check_padding,
    check_same_tokenizer,
    comparison_from_record,
    fit_length_slope,
    gold_reward_metrics,
    held_out_metrics,
    length_balance_weights,
    load_reward_base,
    orient,
    pearson,
    read_helpful_preferences,
    reward_scores_sharded,
    save_reward_model,
    sl_revision_pairs,
    split_held_out,
    tokenize_comparisons,
)
from cai.run_store import RunStore
from cai.training import jsonl_log_callback, last_checkpoint, no_final_checkpoint_callback, trainer_config


def fingerprint(train: Sequence[PreferencePair], held_out: Sequence[PreferencePair], soft_labels: bool, weights: Sequence[float] | None = None) -> str:
    return content_fingerprint([soft_labels, [(c.id, c.chosen, c.rejected, c.p_chosen) for c in train], [c.id for c in held_out], list(weights) if weights is not None else None])


def revision_pairs(store: RunStore, p_revision: float) -> list[PreferencePair]:
    """reward.sl_revisions: the SL generate stage's chains in this output_dir, as revision-over-response pairs."""
    if not store.stage_done("generate"):
        raise CaiError(f"reward.sl_revisions: {store.stage_dir(layout.SL_DATA)} holds no finished SL generate stage (run cai/sl.py into this output_dir first), or set reward.sl_revisions=false")
    pairs = sl_revision_pairs(store.read_records(layout.SL_DATA), p_revision)
    if not pairs:
        raise CaiError(f"reward.sl_revisions: no red-team chain in {store.stage_dir(layout.SL_DATA)} has an accepted revision that differs from its response; set reward.sl_revisions=false")
    return pairs


def run_reward(config: RLRunConfig, store: RunStore, accelerator: Any) -> None:
    """Train the reward model on the preferences (+ helpful file), report held-out quality, save it."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig

    settings = config.reward
    if not 0.0 <= settings.eval_fraction < 1.0:
        raise CaiError(f"reward.eval_fraction: must be in [0, 1), got {settings.eval_fraction}; 0.1 holds out a tenth")
    policy = policy_reference(config)
    records = store.require_stage("label", needed_by="reward", records=PREFERENCES)
    source_dir = store.stage_dir(PREFERENCES)
    if not records:
        raise CaiError(f"{source_dir}: holds no preferences; check the label stage (feedback.min_confidence may drop every comparison) and rerun it with force=true")
    comparisons = [comparison_from_record(r, where=f"{source_dir} record {r.get('id', i)!r}", source="ai") for i, r in enumerate(records)]
    if settings.helpful_preferences:
        comparisons += read_helpful_preferences(settings.helpful_preferences)
    if settings.sl_revisions:
        comparisons += revision_pairs(store, settings.sl_revision_p)

    policy_ref = models.resolve(policy, setting="model")
    tokenizer = models.load_tokenizer(policy_ref, padding_side="right")
    check_padding(tokenizer, setting="model")
    base_setting = "reward.model" if settings.model else "model"
    base_ref = models.resolve(settings.model, setting="reward.model") if settings.model else policy_ref
    if settings.model:
        check_same_tokenizer(tokenizer, models.load_tokenizer(base_ref), policy_name=policy_ref.name, reward_name=base_ref.name)

    oriented = [orient(c) for c in comparisons]
    ties_dropped = 0
    if not settings.soft_labels:  # a hard label needs a winner
        ties_dropped = sum(c.p_chosen == 0.5 for c in oriented)
        oriented = [c for c in oriented if c.p_chosen > 0.5]
        if not oriented:
            raise CaiError(f"{source_dir}: every preference is a tie (p_chosen = 0.5), nothing to train on with reward.soft_labels=false; use soft labels")
    train, held_out = split_held_out(oriented, settings.eval_fraction, config.seed)
    max_length = settings.training.max_length
    train_lengths = [(len(response_ids(tokenizer, c.chosen)), len(response_ids(tokenizer, c.rejected))) for c in train]
    weights, length_balance = length_balance_weights([a for a, _ in train_lengths], [b for _, b in train_lengths])
    length_balance["enabled"] = settings.length_balance
    weighted = settings.length_balance and length_balance["balanced"]
    rows, truncated = tokenize_comparisons(tokenizer, train, max_length=max_length, soft_labels=settings.soft_labels, weights=weights if weighted else None)

    checkpoints = store.root / layout.checkpoints("reward")
    inputs = fingerprint(train, held_out, settings.soft_labels, weights if weighted else None)
    resume = last_checkpoint(checkpoints)
    started = store.stage_info("reward").get("inputs")
    if resume and started and started != inputs:
        raise CaiError(f"{checkpoints}: reward training was started on other preferences or settings; set force=true to start over, or use a new output_dir")
    counts = {"train": len(train), "held_out": len(held_out), "ai": sum(c.source == "ai" for c in comparisons), "helpful": sum(c.source == "helpful" for c in comparisons), "sl_revision": sum(c.source == "sl_revision" for c in comparisons)}
    store.mark_stage("reward", "running", inputs=inputs, **counts)

    set_seed(config.seed)  # the score head is freshly initialised
    model = load_reward_base(base_ref, trainable=True, setting=base_setting)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trainer_config(RewardConfig, settings.training, section="reward.training", output_dir=checkpoints, seed=config.seed)
    trainer = build_reward_trainer(
        model,
        args,
        Dataset.from_list(rows),
        tokenizer,
        soft_labels=settings.soft_labels,
        weighted=weighted,
        peft_config=models.lora_config(config.lora, task_type="SEQ_CLS") if config.lora.enabled else None,
        callbacks=[jsonl_log_callback(store.root / layout.log("reward"), stage="reward"), no_final_checkpoint_callback()],
    )
    if resume and accelerator.is_main_process:
        print(f"[rl] reward: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)

    length_correction = correct_length(trainer.model, tokenizer, train, enabled=settings.length_correction, max_length=max_length, batch_size=settings.training.per_device_train_batch_size, accelerator=accelerator)
    metrics = evaluate_held_out(trainer.model, tokenizer, held_out, max_length=max_length, batch_size=settings.training.per_device_train_batch_size, accelerator=accelerator)
    gold = None
    if config.feedback.gold:
        from cai.feedback.gold import read_gold

        gold = gold_reward_metrics(trainer.model, tokenizer, read_gold(config.feedback.gold), max_length=max_length, batch_size=settings.training.per_device_train_batch_size, accelerator=accelerator)
        gold["gold_set"] = config.feedback.gold
    save_reward_model(trainer, tokenizer, store.root / REWARD_MODEL, accelerator=accelerator)
    store.mark_stage(
        "reward",
        "done",
        **counts,
        soft_labels=settings.soft_labels,
        ties_dropped=ties_dropped,
        truncated_prompts=truncated,
        train_loss=result.training_loss,
        steps=result.global_step,
        lora=config.lora.enabled,
        resumed_from=resume,
        held_out_metrics=metrics,
        gold=gold,
        length_balance=length_balance,
        length_correction=length_correction,
    )
    store.update_manifest(lambda m: m.setdefault("models", {}).update({REWARD_MODEL: str(store.root / REWARD_MODEL)}))
    if accelerator.is_main_process:
        quality = "no held-out set (reward.eval_fraction=0)"
        if metrics:
            quality = f"held-out agreement with the labels {_fmt(metrics['accuracy'])}, ECE vs soft targets {_fmt(metrics['ece'])}, score-length r {_fmt(metrics['length_correlation'])}"
        loss = f"loss {result.training_loss:.4f}" + (" (since the resume)" if resume else "")
        share = length_balance["chosen_longer_share"]
        balance = f"chosen longer in {share:.0%} of training pairs" if share is not None else "no length differences"
        balance += ", length-balanced by weights" if weighted else (" (reward.length_balance=false)" if not settings.length_balance else "")
        sources = ", ".join(f"{counts[k]} {name}" for k, name in (("ai", "AI-labelled"), ("helpful", "human helpfulness"), ("sl_revision", "SL revision-over-response")) if counts[k])
        print(f"[rl] reward: {len(train)} comparisons ({sources}, before the held-out split), {result.global_step} steps, {loss}, {balance}; {quality} -> {store.root / REWARD_MODEL}")
        if length_correction["enabled"]:
            print(f"[rl] reward: length correction {length_correction['slope_per_token']:+.4f} per response token subtracted from every score (training responses' score-length r {_fmt(length_correction['train_length_correlation_before'])} -> {_fmt(length_correction['train_length_correlation_after'])})")
        if gold:
            from cai.feedback.gold import describe

            print(f"[rl] reward: {describe(gold, who='reward-model')}, score-length r on gold responses {_fmt(gold['length_correlation'])}, prefers the longer response in {_fmt(gold['prefers_longer_share'])} of gold pairs")


def correct_length(model: Any, tokenizer: Any, train: Sequence[PreferencePair], *, enabled: bool, max_length: int, batch_size: int, accelerator: Any) -> dict[str, Any]:
    """`reward.length_correction`: fit the trained model's score per response token on its training
    responses (both sides of every pair) and keep it in the model's config, where every scorer reads
    it. Fitted on training responses only, so the gold audit and eval measure it, not tune it."""
    setattr(model.config, LENGTH_SLOPE, 0.0)  # a reward model started from a corrected one scores raw until refitted
    if not enabled:
        return {"enabled": False}
    ids = [scored_ids(tokenizer, c.prompt, text, max_length=max_length) for c in train for text in (c.chosen, c.rejected)]
    lengths = [len(response_ids(tokenizer, text)) for c in train for text in (c.chosen, c.rejected)]
    raw = reward_scores_sharded(model, ids, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, accelerator=accelerator, response_lengths=lengths)
    slope = fit_length_slope(raw, lengths) or 0.0
    setattr(model.config, LENGTH_SLOPE, slope)
    corrected = [score - slope * length for score, length in zip(raw, lengths)]
    return {"enabled": True, "slope_per_token": slope, "train_responses": len(raw), "train_length_correlation_before": pearson(raw, lengths), "train_length_correlation_after": pearson(corrected, lengths)}


def evaluate_held_out(model: Any, tokenizer: Any, held_out: Sequence[PreferencePair], *, max_length: int, batch_size: int, accelerator: Any) -> dict[str, Any] | None:
    """Score every held-out response on the PPO ids and summarise (None without a held-out set)."""
    if not held_out:
        return None
    ids = [scored_ids(tokenizer, c.prompt, text, max_length=max_length) for c in held_out for text in (c.chosen, c.rejected)]
    lengths = [len(response_ids(tokenizer, text)) for c in held_out for text in (c.chosen, c.rejected)]
    scores = reward_scores_sharded(model, ids, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, accelerator=accelerator, response_lengths=lengths)
    metrics = held_out_metrics(scores[0::2], scores[1::2], [c.p_chosen for c in held_out], lengths[0::2], lengths[1::2])
    for source in sorted({c.source for c in held_out}):
        picks = [i for i, c in enumerate(held_out) if c.source == source and c.p_chosen > 0.5]
        metrics[f"accuracy_{source}"] = float(np.mean([scores[2 * i] > scores[2 * i + 1] for i in picks])) if picks else None
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
