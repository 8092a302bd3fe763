"""Gold-set audit: how often a labeler (or a reward model) agrees with human-written gold preferences.

`examples/gold_preferences.jsonl` holds pairs {id, prompt, chosen, rejected, principle_id, kind}
written by people, balanced so that neither length nor refusal wording alone predicts the
chosen side. A labeler is asked about every pair with the gold-chosen response shown first
for even-numbered pairs and second for odd ones, so a labeler that always prefers one position
scores 50%. A tie (p = 0.5) counts as half right. Intervals are Wilson 95% score intervals.

The audit reports accuracy overall, per kind and per half (harmful requests vs benign ones),
the position bias of the raw votes (order-free methods have none by construction), and
calibration of P(gold chosen) against the gold outcome, each pair counted in both
orientations (as the reward model's calibration is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cai.errors import CaiError

HARMFUL_KINDS = ("harmful_safe_vs_unsafe", "subtle_harm")  # the request asks for harm: the safe side is gold
BENIGN_KINDS = ("benign_helpful_vs_refusal", "safe_direct_vs_preachy")  # the request is fine: the direct side is gold
Z95 = 1.959963984540054


@dataclass(frozen=True)
class GoldPair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    principle_id: str
    kind: str


def read_gold(path: str | Path, *, setting: str = "feedback.gold") -> list[GoldPair]:
    """The gold set; a missing file or field is a user error naming the line."""
    from cai.prompt_sources import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise CaiError(f"{setting}: {path} not found; point it at a gold preference JSONL (examples/gold_preferences.jsonl) or set {setting}=null")
    pairs = []
    for number, record in read_jsonl(path, setting):
        missing = [k for k in ("prompt", "chosen", "rejected", "kind") if not isinstance(record.get(k), str) or not record.get(k)]
        if missing:
            raise CaiError(f"{path}:{number}: missing or empty {missing[0]!r}; each gold pair needs id, prompt, chosen, rejected and kind")
        pairs.append(GoldPair(str(record.get("id", f"gold-{number}")), record["prompt"], record["chosen"], record["rejected"], str(record.get("principle_id", "")), record["kind"]))
    if not pairs:
        raise CaiError(f"{setting}: {path} holds no pairs; add some or set {setting}=null")
    return pairs


def gold_sample(pairs: Sequence[GoldPair], count: int | None, seed: int) -> list[GoldPair]:
    """At most `count` pairs, taken in turn from each kind (each kind shuffled with `seed`), in file order.

    A smaller audit keeps every kind represented; the accuracy interval widens with fewer pairs.
    """
    if count is None or count >= len(pairs):
        return list(pairs)
    import random

    by_kind: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_kind.setdefault(pair.kind, []).append(index)
    rng = random.Random(seed)
    queues = [rng.sample(indices, len(indices)) for _, indices in sorted(by_kind.items())]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return [pairs[i] for i in sorted(chosen)]


def gold_first(index: int) -> bool:
    """Whether the gold-chosen response is shown first for the pair at `index` (alternating)."""
    return index % 2 == 0


def wilson_interval(successes: float, count: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count half)."""
    if count <= 0:
        return (0.0, 1.0)
    p = successes / count
    denominator = 1.0 + z * z / count
    centre = (p + z * z / (2 * count)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / count + z * z / (4 * count * count)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_summary(p_gold: Sequence[float]) -> dict[str, Any]:
    """Accuracy (ties half), its Wilson 95% interval and the count, for P(gold chosen) values."""
    count = len(p_gold)
    correct = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_gold)
    low, high = wilson_interval(correct, count)
    return {"accuracy": correct / count if count else None, "ci95": [low, high], "count": count}


def gold_metrics(pairs: Sequence[GoldPair], p_gold: Sequence[float], *, raw_first_votes: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy overall / per kind / per half, calibration, and position bias of the raw first-shown votes.

    `p_gold[i]` is the labeler's P(gold chosen is better) for `pairs[i]`; `raw_first_votes` are
    P(first shown) of every position-dependent vote (None for an order-free method).
    """
    import numpy as np

    from cai.feedback.preference_math import calibration

    if len(pairs) != len(p_gold):
        raise ValueError(f"gold_metrics: {len(pairs)} pairs but {len(p_gold)} probabilities")
    result = accuracy_summary(list(p_gold))
    kinds = sorted({p.kind for p in pairs})
    result["per_kind"] = {kind: accuracy_summary([v for p, v in zip(pairs, p_gold) if p.kind == kind]) for kind in kinds}
    for half, members in (("harmful", HARMFUL_KINDS), ("benign", BENIGN_KINDS)):
        values = [v for p, v in zip(pairs, p_gold) if p.kind in members]
        if values:
            result[f"{half}_half"] = accuracy_summary(values)
    p = np.asarray(p_gold, dtype=np.float64)
    both = calibration(np.concatenate([p, 1.0 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)]))
    result["calibration"] = {"ece": both.expected_calibration_error, "brier": both.brier, "mean_p_gold": float(p.mean()), "mean_abs_p_minus_half": float(np.mean(np.abs(p - 0.5)))}
    if raw_first_votes:
        votes = np.asarray(raw_first_votes, dtype=np.float64)
        result["position_bias"] = {"first_preferred_share": float(np.mean(votes > 0.5)), "mean_p_first": float(votes.mean()), "votes": int(votes.size)}
    else:
        result["position_bias"] = None  # order-free: no response is ever shown beside the other
    lo, hi = result["ci95"]
    result["at_chance"] = lo <= 0.5 <= hi
    return result


def audit_labeler(label: Any, pairs: Sequence[GoldPair], *, method: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `label(comparisons) -> judgements` on the gold pairs; return the metrics and one record per pair."""
    from cai.feedback.judge import Comparison

    comparisons = []
    for index, pair in enumerate(pairs):
        first, second = (pair.chosen, pair.rejected) if gold_first(index) else (pair.rejected, pair.chosen)
        comparisons.append(Comparison(f"gold:{pair.id}", pair.prompt, first, second))
    judgements = label(comparisons)
    p_gold = [j.p_first if gold_first(i) else 1.0 - j.p_first for i, j in enumerate(judgements)]
    order_free = method in ("pointwise", "likelihood_ratio")
    raw = None if order_free else [v.p_a for j in judgements for v in j.votes]
    metrics = gold_metrics(pairs, p_gold, raw_first_votes=raw)
    metrics["method"] = method
    records = [{"id": pair.id, "kind": pair.kind, "gold_first": gold_first(i), "p_gold": float(p), "principle_ids": list(j.principle_ids)} for i, (pair, j, p) in enumerate(zip(pairs, judgements, p_gold))]
    return metrics, records


def describe(metrics: dict[str, Any], *, who: str = "feedback", subject: str = "these labels") -> str:
    """One line for the stage output: accuracy with its interval, the halves, bias and calibration, and a verdict."""
    lo, hi = metrics["ci95"]
    parts = [f"{who} gold accuracy {metrics['accuracy']:.0%} [95% CI {lo:.0%}-{hi:.0%}] on {metrics['count']} pairs"]
    halves = [f"{half} {metrics[f'{half}_half']['accuracy']:.0%}" for half in ("harmful", "benign") if f"{half}_half" in metrics]
    if halves:
        parts.append("(" + ", ".join(halves) + ")")
    bias = metrics.get("position_bias")
    parts.append(f"first shown preferred {bias['first_preferred_share']:.0%} of raw votes" if bias else "order-free")
    parts.append(f"ECE {metrics['calibration']['ece']:.3f}")
    text = ", ".join([parts[0] + (" " + parts[1] if halves else "")] + parts[(2 if halves else 1) :])
    if metrics.get("at_chance"):
        text += f" -- AT CHANCE: the interval includes 50%, {subject} carry no measurable signal"
    return text


def per_kind_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown rows: overall, each half and each kind, with 95% intervals."""
    rows = ["| pairs | n | accuracy | 95% CI |", "|---|---|---|---|"]
    entries = [("all", metrics)] + [(f"{half} half", metrics[f"{half}_half"]) for half in ("harmful", "benign") if f"{half}_half" in metrics]
    entries += list(metrics["per_kind"].items())
    for name, entry in entries:
        lo, hi = entry["ci95"]
        rows.append(f"| {name} | {entry['count']} | {entry['accuracy']:.0%} | {lo:.0%}-{hi:.0%} |")
    return rows


def audit_command(argv: Sequence[str]) -> int:
    """`python -m cai audit-feedback --config CONFIG [key=value ...]`: the labeler of that config on the gold set."""
    import json

    from cai.config import RLRunConfig, load_config, split_cli
    from cai.constitution import load_constitution
    from cai.launch import quiet_libraries

    path, overrides = split_cli(list(argv))
    config = load_config(RLRunConfig, path, overrides)
    settings = config.feedback
    if not settings.gold:
        raise CaiError("feedback.gold: no gold set to audit on; set feedback.gold=examples/gold_preferences.jsonl")
    pairs = gold_sample(read_gold(settings.gold), settings.gold_pairs, config.seed)
    constitution = load_constitution(config.constitution)
    reference = settings.model or _run_base_model(config)
    quiet_libraries()
    from accelerate import Accelerator

    from cai import models
    from cai.feedback.judge import check_settings
    from cai.feedback.methods import check_method, judging_method, label_comparisons

    check_settings(settings)
    check_method(settings, constitution)
    models.use_precision(config.precision)
    accelerator = Accelerator()
    ref = models.resolve(reference, setting="feedback.model")
    tokenizer = models.load_tokenizer(ref, padding_side="left")
    model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
    models.sync_pad_token(model, tokenizer)
    metrics, records = audit_labeler(lambda c: label_comparisons(model, tokenizer, c, constitution, settings, accelerator, seed=config.seed, generation=config.generation), pairs, method=judging_method(settings))
    metrics.update(gold_set=settings.gold, feedback_model=reference, principles_per_comparison=settings.principles_per_comparison)
    if accelerator.is_main_process:
        print(f"[audit] {settings.method} with {reference}: {describe(metrics)}")
        print("\n".join(per_kind_table(metrics)))
        out = Path(config.output_dir) / "audits" / f"feedback-{settings.method}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"metrics": metrics, "pairs": records}, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"[audit] -> {out}")
    return 0


def _run_base_model(config: Any) -> str:
    """The default feedback model: the model the SL run in output_dir started from."""
    import json

    manifest = Path(config.output_dir) / "manifest.json"
    if manifest.is_file():
        policy = json.loads(manifest.read_text(encoding="utf-8")).get("models", {}).get("policy")
        if policy:
            return policy
    raise CaiError(f"feedback.model: no SL run in {config.output_dir} to take the feedback model from; set feedback.model (e.g. feedback.model=embedded)")


def audit_key(pairs: Sequence[GoldPair], reference: str, settings: Any, constitution: Any, seed: int) -> str:
    """What a gold audit's result depends on: the same key means the same labeler on the same pairs (reused, not rerun)."""
    import dataclasses

    from cai.fingerprint import fingerprint

    relevant = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("batch_size", "chunk_size", "model", "gold")}
    return fingerprint([[dataclasses.astuple(p) for p in pairs], reference, relevant, constitution.content_hash, [p.id for p in constitution.preferences], seed], sort_keys=True, ensure_ascii=False)
