"""The RLAIF `reward` stage: a preference model trained with trl's RewardTrainer on the AI labels.

Follows Bai et al. 2022 (sec. 4.1): the feedback model's probabilities are the targets, and
human helpfulness comparisons may be mixed in (here a user file, `reward.helpful_preferences`,
each comparison counted as certain, p_chosen = 1). Departures, and why:
- Soft targets go through `preference_math.soft_preference_loss` in a `compute_loss` override;
  trl has only hard labels, which stay one setting away (`reward.soft_labels=false`).
- Every comparison is tokenized with `chat_format.scored_ids` (template up to the assistant
  header + response + one EOS), the exact ids a trl PPO rollout scores, and the score is read
  at that EOS; trl's own tokenization would render the assistant turn's trailing newline.
- Calibration is measured against the soft targets the model was trained on, each held-out
  comparison in both orders (`ece`: a perfect soft fit scores 0); the ECE against the winner
  (`ece_vs_winner`, the usual reliability diagram) is kept beside it, but it counts the
  labels' own uncertainty as miscalibration (a perfect fit to 0.6 labels reports 0.36).
- `reward.length_balance` weights the pairs so that pairs whose chosen response is longer
  and pairs whose chosen is shorter carry equal total weight: a labeler (or a helpfulness
  file) that mostly prefers the longer response otherwise teaches "longer is better".
- The reward model is scored on the gold preference set (`feedback.gold`) after training:
  accuracy per kind and per half with 95% intervals, and the score-length correlation on
  gold responses, whose lengths do not predict the gold answer.
- `reward.length_correction` fits, after training, the score's slope per response token on the
  training responses and keeps it in the model's config (`cai_length_slope`); every scorer (PPO's
  `RewardView`, eval, the gold audit, `ConstitutionalReward`) subtracts slope x response tokens.
  A small reward model trained on a few hundred pairs learns length more than harm, and
  length-balance weights alone did not remove it (score-length r 0.8 on gold responses).
- The reward model is always saved with LoRA merged: PPO loads it as a plain
  sequence-classification model (reward and value head), so an adapter cannot stand in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cai import models
from cai.chat_format import response_ids, scored_ids
from cai.errors import CaiError
from cai.feedback.preference_math import calibration
from cai.training import (
    save_trained,
)

COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One preference: `chosen` is preferred to `rejected` with probability `p_chosen`."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    p_chosen: float
    source: str  # "ai" (the label stage), "helpful" (the user's file) or "sl_revision" (reward.sl_revisions)


# ---------------------------------------------------------------- reading comparisons


def message_text(value: Any, *, role: str, where: str, column: str) -> str:
    """A plain string, or a conversational column holding exactly one `role` message."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = value[0]
        if message.get("role") == role and isinstance(message.get("content"), str):
            return message["content"]
    raise CaiError(f'{where}: column {column!r} must be a string or a single {role!r} message ([{{"role": "{role}", "content": ...}}]), got {json.dumps(value)[:80]}; multi-turn prompts are not supported')


def probability(value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise CaiError(f"{where}: p_chosen {value!r} is not a probability in [0, 1]; fix the record or rerun the stage that wrote it")
    return float(value)


def comparison_from_record(record: dict[str, Any], *, where: str, source: str, default_p: float | None = None) -> PreferencePair:
    """A label-stage or user record ({"prompt","chosen","rejected"[,"p_chosen"]}) as a PreferencePair."""
    for column in COLUMNS:
        if column not in record:
            raise CaiError(f"{where}: missing column {column!r}; each record needs prompt, chosen and rejected (id optional)")
    raw_p = record.get("p_chosen", default_p)
    if raw_p is None:
        raise CaiError(f"{where}: missing column 'p_chosen'; rerun the label stage (force=true)")
    return PreferencePair(
        id=str(record.get("id", where)),
        prompt=message_text(record["prompt"], role="user", where=where, column="prompt"),
        chosen=message_text(record["chosen"], role="assistant", where=where, column="chosen"),
        rejected=message_text(record["rejected"], role="assistant", where=where, column="rejected"),
        p_chosen=probability(raw_p, where=where),
        source=source,
    )


def read_helpful_preferences(path: str | Path, *, setting: str = "reward.helpful_preferences") -> list[PreferencePair]:
    """Human helpfulness comparisons from JSONL: prompt/chosen/rejected as strings or messages, p_chosen = 1."""
    path = Path(path)
    if not path.is_file():
        raise CaiError(f'{setting}: {path} not found; point it at a JSONL file of {{"id","prompt","chosen","rejected"}} lines')
    from cai.prompt_sources import read_jsonl

    comparisons = []
    for number, record in read_jsonl(path, setting):
        where = f"{path}:{number}"
        record = {**record, "id": str(record.get("id", f"{path.stem}-{number}"))}
        comparisons.append(comparison_from_record(record, where=where, source="helpful", default_p=1.0))
    if not comparisons:
        raise CaiError(f"{setting}: {path} holds no preferences; add lines or unset {setting}")
    return comparisons


def sl_revision_pairs(records: Sequence[dict[str, Any]], p_revision: float) -> list[PreferencePair]:
    """The SL stage's red-team chains as preferences: the accepted revision (the SFT target) over the original response.

    The constitution made these pairs (critique, revision, quality gates), so they carry its
    harmlessness signal without a judge; prompts without an accepted revision add nothing.
    """
    pairs = []
    for record in records:
        target, response = record.get("target"), record.get("response")
        if record.get("kind") != "red_team" or not target or not response or target.strip() == response.strip():
            continue
        pairs.append(PreferencePair(f"sl-{record['id']}", record["prompt"], target, response, p_revision, "sl_revision"))
    return pairs


def orient(comparison: PreferencePair) -> PreferencePair:
    """Put the more likely response first (p_chosen >= 0.5), as trl's loss and the accuracy assume."""
    if comparison.p_chosen >= 0.5:
        return comparison
    return replace(comparison, chosen=comparison.rejected, rejected=comparison.chosen, p_chosen=1.0 - comparison.p_chosen)


def split_held_out(comparisons: Sequence[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Seeded train / held-out split by prompt, so no held-out prompt (or response) is trained on.

    Holds out about `fraction` of the comparisons, at least one when there are two or more
    prompts and fraction > 0, and never every prompt.
    """
    prompts = sorted({c.prompt for c in comparisons})
    random.Random(seed).shuffle(prompts)
    target = round(len(comparisons) * fraction)
    if fraction > 0 and len(prompts) >= 2:
        target = max(target, 1)
    per_prompt: dict[str, int] = {}
    for c in comparisons:
        per_prompt[c.prompt] = per_prompt.get(c.prompt, 0) + 1
    chosen: set[str] = set()
    count = 0
    for prompt in prompts[:-1]:  # the last prompt always trains
        if count >= target:
            break
        chosen.add(prompt)
        count += per_prompt[prompt]
    train = [c for c in comparisons if c.prompt not in chosen]
    held_out = [c for c in comparisons if c.prompt in chosen]
    return train, held_out


# ---------------------------------------------------------------- tokenization


def tokenize_comparisons(tokenizer: Any, comparisons: Sequence[PreferencePair], *, max_length: int, soft_labels: bool, weights: Sequence[float] | None = None) -> tuple[list[dict[str, Any]], int]:
    """trl's pre-tokenized columns (`chosen_ids`, `rejected_ids`), plus `p_chosen` for the soft loss.

    Returns the rows and how many comparisons had their prompt cut from the left to fit.
    """
    rows, truncated = [], 0
    for index, c in enumerate(comparisons):
        chosen = scored_ids(tokenizer, c.prompt, c.chosen, max_length=max_length)
        rejected = scored_ids(tokenizer, c.prompt, c.rejected, max_length=max_length)
        full = len(scored_ids(tokenizer, c.prompt, c.chosen)), len(scored_ids(tokenizer, c.prompt, c.rejected))
        truncated += full != (len(chosen), len(rejected))
        row: dict[str, Any] = {"chosen_ids": chosen, "rejected_ids": rejected}
        if soft_labels:
            row["p_chosen"] = c.p_chosen
        if weights is not None:
            row["weight"] = float(weights[index])
        rows.append(row)
    return rows, truncated


def check_padding(tokenizer: Any, *, setting: str) -> None:
    """The score is read at the last non-pad token; if pad were EOS that would be the token before EOS."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise CaiError(
            f"{setting}: the tokenizer has no pad token distinct from EOS ({tokenizer.eos_token!r}), so the reward would be read before the EOS; use a model whose vocabulary has a separate pad token (e.g. <|endoftext|> or <pad>)"
        )


def check_same_tokenizer(policy: Any, reward: Any, *, policy_name: str, reward_name: str, setting: str = "reward.model") -> None:
    """PPO hands the policy's token ids to the reward model, so both must read ids the same way."""
    differences = []
    policy_vocab, reward_vocab = policy.get_vocab(), reward.get_vocab()
    if policy_vocab != reward_vocab:
        only = sorted(set(reward_vocab) ^ set(policy_vocab))[:3]
        detail = f"vocabulary sizes {len(policy_vocab)} vs {len(reward_vocab)}" if only else "same tokens with different ids"
        differences.append(detail + (f", e.g. {', '.join(map(repr, only))}" if only else ""))
    for name in ("eos_token", "pad_token", "bos_token"):
        if getattr(policy, f"{name}_id") != getattr(reward, f"{name}_id"):
            differences.append(f"{name} {getattr(policy, name)!r} vs {getattr(reward, name)!r}")
    if differences:
        raise CaiError(
            f"{setting}: {reward_name} has a different tokenizer from the policy {policy_name} ({'; '.join(differences)}); "
            "PPO scores the policy's token ids with the reward model, so choose a reward base with the policy's tokenizer or unset reward.model"
        )


# ---------------------------------------------------------------- model and trainer


def load_reward_base(ref: models.ModelRef, *, setting: str, dtype: Any = None, trainable: bool = False) -> Any:
    """A sequence-classification model with one output; a LoRA adapter is merged into its base first.
    Trained (reward stage, PPO's value model) it loads in fp32 (`models.weights_dtype`)."""
    from transformers import AutoModelForSequenceClassification

    dtype = models.weights_dtype(dtype, trainable=trainable)
    try:
        if ref.is_adapter:
            causal = models.load_causal_lm(ref, dtype=dtype)
            causal.config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(causal.config, dtype=dtype)
            missing, _ = model.load_state_dict(causal.state_dict(), strict=False)
            missing = [k for k in missing if not k.startswith(("score.", "classifier."))]
            if missing:
                raise CaiError(f"{setting}: {ref.name} does not map onto a sequence classifier (missing {missing[0]}); merge the adapter and save a full model")
        else:
            from trl.trainer.reward_trainer import suppress_seqcls_warning

            with suppress_seqcls_warning():
                model = AutoModelForSequenceClassification.from_pretrained(ref.path, gguf_file=ref.gguf_file, num_labels=1, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise CaiError(f"{setting}: cannot load {ref.name} as a reward model ({models._first_line(error)}); use a causal LM with a sequence-classification class") from None
    if ref.gguf_file:
        model.config.quantization_config = None
    return model


def soft_label_classes() -> tuple[type, type]:
    """trl's RewardTrainer and preference collator, extended to carry `p_chosen` to the loss."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from cai.feedback.preference_math import soft_preference_loss

    @dataclass
    class SoftPreferenceCollator(DataCollatorForPreference):
        """trl's collator (chosen rows, then rejected rows, right padded) plus a `p_chosen` tensor."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            for column in ("p_chosen", "weight"):
                if column in examples[0]:
                    batch[column] = torch.tensor([e[column] for e in examples], dtype=torch.float)
            return batch

    class SoftRewardTrainer(RewardTrainer):
        """RewardTrainer whose loss is the cross-entropy against the labeler's probability."""

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()  # trl keeps only chosen_ids, rejected_ids, margin
            for column in ("p_chosen", "weight"):
                if column not in self._signature_columns:
                    self._signature_columns = [*self._signature_columns, column]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p_chosen = inputs.pop("p_chosen", None)
            weights = inputs.pop("weight", None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if p_chosen is not None or weights is not None:  # trl's metrics stand; only the loss is replaced
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                target = p_chosen if p_chosen is not None else torch.ones_like(chosen)
                loss = soft_preference_loss(chosen, rejected, target, inputs.get("margin"), weights)
                if self.args.center_rewards_coefficient is not None:
                    loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
            return (loss, outputs) if return_outputs else loss

    return SoftRewardTrainer, SoftPreferenceCollator


def build_reward_trainer(model: Any, args: Any, train_dataset: Any, tokenizer: Any, *, soft_labels: bool, weighted: bool = False, peft_config: Any = None, callbacks: list[Any] = ()) -> Any:
    """trl's RewardTrainer as is for unweighted hard labels; the soft-label subclass for soft labels or pair weights."""
    from trl import RewardTrainer

    trainer_cls, collator = RewardTrainer, None
    if soft_labels or weighted:
        trainer_cls, collator_cls = soft_label_classes()
        collator = collator_cls(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)
    return trainer_cls(model=model, args=args, data_collator=collator, train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))


# ---------------------------------------------------------------- scoring and held-out metrics


LENGTH_SLOPE = "cai_length_slope"  # reward per response token, kept in the reward model's config.json


def length_slope(config: Any) -> float:
    """The per-response-token slope a reward model's scores are corrected by, from its config (0.0: none)."""
    return float(getattr(config, LENGTH_SLOPE, 0.0) or 0.0)


def saved_length_slope(reference: str) -> float:
    """The length slope in a saved reward model's config.json (0.0: none, or not a local folder)."""
    path = Path(reference) / "config.json"
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text()).get(LENGTH_SLOPE) or 0.0)


def fit_length_slope(scores: Sequence[float], lengths: Sequence[int]) -> float | None:
    """Least-squares slope of score on response length (None when every length is the same)."""
    x, y = np.asarray(lengths, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if x.size < 2 or x.std() == 0:
        return None
    return float(np.mean((x - x.mean()) * (y - y.mean())) / x.var())


def score_ids(model: Any, id_lists: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int = 8, response_lengths: Sequence[int] | None = None) -> list[float]:
    """Reward of each id list by a plain forward pass, right padded: the score at the last real token,
    less the model's length slope (`reward.length_correction`) times each response's tokens.

    Batched in order of length (results in input order), so a batch pads to similar lengths.
    """
    import torch

    slope = length_slope(model.config)
    if slope and (response_lengths is None or len(response_lengths) != len(id_lists)):
        raise ValueError("score_ids: this reward model is length-corrected; pass response_lengths (the response's tokens of each id list)")

    if getattr(model.config, "pad_token_id", None) != pad_token_id:
        raise ValueError(f"score_ids: model.config.pad_token_id is {model.config.pad_token_id}, expected {pad_token_id}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = [0.0] * len(id_lists)
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(id_lists[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(id_lists[i])] = torch.tensor(list(id_lists[i]), dtype=torch.long)
                mask[row, : len(id_lists[i])] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for i, value in zip(batch, logits[:, 0].float().cpu().tolist()):
                scores[i] = value - slope * response_lengths[i] if slope else value
    model.train(was_training)
    return scores


def score_responses(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *, max_length: int | None = None, batch_size: int = 8) -> list[float]:
    """Reward of (prompt, response) pairs on exactly the ids PPO scores (for eval and reports)."""
    ids = [scored_ids(tokenizer, p, r, max_length=max_length) for p, r in zip(prompts, responses, strict=True)]
    return score_ids(model, ids, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, response_lengths=[len(response_ids(tokenizer, r)) for r in responses])


def reward_scores_sharded(model: Any, id_lists: list[list[int]], *, pad_token_id: int, batch_size: int, accelerator: Any, response_lengths: Sequence[int] | None = None) -> list[float]:
    """Score across processes (equal shares, so sharded models step together), gathered in input order."""
    from accelerate.utils import gather_object

    with accelerator.split_between_processes(list(range(len(id_lists))), apply_padding=True) as mine:
        lengths = [response_lengths[i] for i in mine] if response_lengths is not None else None
        scores = score_ids(model, [id_lists[i] for i in mine], pad_token_id=pad_token_id, batch_size=batch_size, response_lengths=lengths)
        pairs = list(zip(mine, scores))
    by_index: dict[int, float] = {}
    for index, value in gather_object(pairs) if accelerator.num_processes > 1 else pairs:
        by_index.setdefault(index, value)
    return [by_index[i] for i in range(len(id_lists))]


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation, or None when either side is constant (or fewer than two points)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (a.std() * b.std()))


def held_out_metrics(chosen_scores: Sequence[float], rejected_scores: Sequence[float], p_chosen: Sequence[float], chosen_lengths: Sequence[int], rejected_lengths: Sequence[int], *, bins: int = 10) -> dict[str, Any]:
    """Accuracy, calibration against the soft targets (ECE, Brier), gap to the soft labels, score-length correlation.

    Inputs are oriented (p_chosen >= 0.5). The predicted probability is sigmoid(r_c - r_r);
    ties (p_chosen = 0.5) have no winner and are left out of accuracy and `ece_vs_winner`.
    Both ECEs bin each comparison in both orders: (p, target) and (1 - p, 1 - target).
    """
    from cai.feedback.preference_math import soft_calibration

    chosen, rejected = np.asarray(chosen_scores, dtype=np.float64), np.asarray(rejected_scores, dtype=np.float64)
    labels = np.asarray(p_chosen, dtype=np.float64)
    predicted = np.exp(-np.logaddexp(0.0, rejected - chosen))  # sigmoid(r_c - r_r), no overflow
    decided = labels > 0.5
    result: dict[str, Any] = {
        "comparisons": int(chosen.size),
        "ties": int((~decided).sum()),
        "label_mae": float(np.mean(np.abs(predicted - labels))) if chosen.size else None,
        "length_correlation": pearson(np.concatenate([chosen, rejected]), np.concatenate([chosen_lengths, rejected_lengths]).astype(np.float64)),
        "mean_score": float(np.mean(np.concatenate([chosen, rejected]))) if chosen.size else None,
        "accuracy": None,
        "ece": None,
        "brier": None,
        "ece_vs_winner": None,
    }
    if chosen.size:
        ece, brier = soft_calibration(np.concatenate([predicted, 1.0 - predicted]), np.concatenate([labels, 1.0 - labels]), bins=bins)
        result.update(ece=ece, brier=brier)
    if decided.any():
        p = predicted[decided]
        both = calibration(np.concatenate([p, 1.0 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)]), bins=bins)
        result.update(accuracy=float(np.mean(chosen[decided] > rejected[decided])), ece_vs_winner=both.expected_calibration_error)
    return result


def length_balance_weights(chosen_lengths: Sequence[int], rejected_lengths: Sequence[int]) -> tuple[list[float], dict[str, Any]]:
    """Pair weights giving chosen-longer and chosen-shorter pairs equal total weight (equal lengths: 1).

    With n_long and n_short pairs in the two groups and N = n_long + n_short, each group's
    pairs get N / (2 n_group), so both sum to N / 2 and the weights average 1. When one group
    is empty nothing can balance it: every weight stays 1 and `balanced` is false.
    """
    longer = [c > r for c, r in zip(chosen_lengths, rejected_lengths, strict=True)]
    shorter = [c < r for c, r in zip(chosen_lengths, rejected_lengths)]
    n_long, n_short = sum(longer), sum(shorter)
    decided = n_long + n_short
    stats: dict[str, Any] = {"chosen_longer": n_long, "chosen_shorter": n_short, "same_length": len(longer) - decided, "chosen_longer_share": n_long / decided if decided else None}
    if not n_long or not n_short:
        return [1.0] * len(longer), {**stats, "balanced": False}
    w_long, w_short = decided / (2 * n_long), decided / (2 * n_short)
    weights = [w_long if lg else w_short if sh else 1.0 for lg, sh in zip(longer, shorter)]
    return weights, {**stats, "balanced": True, "weight_chosen_longer": w_long, "weight_chosen_shorter": w_short}


def gold_reward_metrics(model: Any, tokenizer: Any, pairs: Sequence[Any], *, max_length: int, batch_size: int, accelerator: Any) -> dict[str, Any]:
    """The reward model on the gold set: accuracy (per kind, per half, 95% CI), calibration, score-length r on gold responses."""
    from cai.feedback.gold import gold_metrics

    ids = [scored_ids(tokenizer, p.prompt, text, max_length=max_length) for p in pairs for text in (p.chosen, p.rejected)]
    lengths = [len(response_ids(tokenizer, text)) for p in pairs for text in (p.chosen, p.rejected)]
    scores = reward_scores_sharded(model, ids, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, accelerator=accelerator, response_lengths=lengths)
    chosen, rejected = np.asarray(scores[0::2]), np.asarray(scores[1::2])
    p_gold = (np.exp(-np.logaddexp(0.0, rejected - chosen))).tolist()
    metrics = gold_metrics(pairs, p_gold)
    metrics.pop("position_bias", None)
    longer_wins = [(c > r) == (lc > lr) for c, r, lc, lr in zip(chosen, rejected, lengths[0::2], lengths[1::2]) if lc != lr]
    metrics["length_correlation"] = pearson(scores, lengths)
    metrics["prefers_longer_share"] = float(np.mean(longer_wins)) if longer_wins else None
    return metrics


# ---------------------------------------------------------------- saving


def save_reward_model(trainer: Any, tokenizer: Any, destination: Path, *, accelerator: Any) -> None:
    """Always merged: PPO loads the reward model as a plain classifier, an adapter can't stand in."""
    save_trained(trainer, tokenizer, destination, merge_lora=True, padding_side="right", accelerator=accelerator)
