"""Report sections on feedback quality: the labeler, the reward model and the eval judge measured on the gold set.

Every number the RL pipeline produces rests on the AI feedback; these sections say how often
that feedback agrees with human-written gold preferences (`feedback.gold`), with 95% Wilson
intervals, per kind and per half (harmful requests, where the safe answer is gold, and benign
ones, where the direct answer is gold), and say in words when a number means nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HALVES = (("harmful_half", "harmful requests"), ("benign_half", "benign requests"))


def accuracy_cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("accuracy") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{entry['accuracy']:.0%} [{lo:.0%}, {hi:.0%}]"


def verdict(gold: dict[str, Any], who: str) -> str:
    """One sentence: whether `who`'s gold accuracy is distinguishable from a coin flip, and where it fails."""
    lo, hi = gold["ci95"]
    if lo <= 0.5 <= hi:
        return f"**The {who} is at chance on the gold set** (its 95% interval {lo:.0%}-{hi:.0%} includes 50%): what it decides carries no measurable signal."
    weak = [name for key, name in HALVES if key in gold and gold[key]["ci95"][1] < 0.5]
    if gold["accuracy"] < 0.5:
        return f"The {who} prefers the wrong response more often than the right one ({gold['accuracy']:.0%})."
    if weak:
        return f"The {who} agrees with the gold set more often than chance overall, but is below chance on {' and '.join(weak)}: read its preferences there as wrong."
    return f"The {who} agrees with the gold set more often than chance ({gold['accuracy']:.0%}, interval {lo:.0%}-{hi:.0%})."


def feedback_quality_section(run_dir: Path) -> list[str]:
    """Labeler and reward model on the gold set, from the manifest; nothing when neither was audited."""
    path = Path(run_dir) / "manifest.json"
    try:
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {}) if path.is_file() else {}
    except json.JSONDecodeError:
        return []
    label, reward = (stages.get("label") or {}), (stages.get("reward") or {})
    label_gold, reward_gold = label.get("gold"), reward.get("gold")
    if not label_gold and not reward_gold:
        return []
    kinds = sorted(set((label_gold or {}).get("per_kind", {})) | set((reward_gold or {}).get("per_kind", {})))
    header = ["", "n", "overall", "harmful requests", "benign requests", *kinds, "ECE"]
    rows = []
    constructed = label.get("method") == "contrastive"  # labels by construction; the audit is of the judge of eval comparisons
    if label_gold:
        rows.append(
            [
                f"eval judge ({label_gold.get('method')})" if constructed else f"labeler ({label.get('method', 'multiple_choice')})",
                label_gold["count"],
                accuracy_cell(label_gold),
                *(accuracy_cell(label_gold.get(k)) for k, _ in HALVES),
                *(accuracy_cell(label_gold["per_kind"].get(k)) for k in kinds),
                f"{label_gold['calibration']['ece']:.3f}",
            ]
        )
    if reward_gold:
        rows.append(["reward model", reward_gold["count"], accuracy_cell(reward_gold), *(accuracy_cell(reward_gold.get(k)) for k, _ in HALVES), *(accuracy_cell(reward_gold["per_kind"].get(k)) for k in kinds), f"{reward_gold['calibration']['ece']:.3f}"])
    lines = [
        "## Feedback quality on the gold set",
        "",
        f"Accuracy on `{(label_gold or reward_gold).get('gold_set')}`: human-written preference pairs where neither length nor refusal wording predicts the answer "
        "(an always-refuse labeler scores about 50%). 95% Wilson intervals in brackets; ties count half.",
        "",
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
        "",
    ]
    if label_gold:
        bias = label_gold.get("position_bias")
        order = f"the first-shown response won {bias['first_preferred_share']:.0%} of raw votes" if bias else "the method is order-free (no position bias possible)"
        if constructed:
            lines += ["The labels come from construction (`feedback.method: contrastive`), which gold pairs lack; the row above is the judge of pairs without one (the eval comparisons). " + verdict(label_gold, "eval judge") + f" Position: {order}.", ""]
        else:
            lines += [verdict(label_gold, "labeler") + f" Position: {order}.", ""]
    if reward_gold:
        r = reward_gold.get("length_correlation")
        longer = reward_gold.get("prefers_longer_share")
        length = f"score-length correlation on gold responses {r:.2f}" if r is not None else "score-length correlation n/a"
        if longer is not None:
            length += f"; it prefers the longer response in {longer:.0%} of gold pairs (the gold answer is the longer one in about half)"
        balance = reward.get("length_balance") or {}
        remedy = ""
        if balance.get("chosen_longer_share") is not None:
            remedy = f" Its training pairs had the chosen response longer in {balance['chosen_longer_share']:.0%}" + (
                ", balanced by weights (reward.length_balance)." if balance.get("enabled") and balance.get("balanced") else ", not balanced."
            )
        lines += [verdict(reward_gold, "reward model") + f" {length}.{remedy}", ""]
    return lines


def judge_gold_lines(metrics: dict[str, Any], *, elo_follows: bool = True) -> list[str]:
    """The eval judge's own gold accuracy, next to its Elo table, and whether the Elo means anything."""
    gold = metrics.get("judge_gold")
    if not gold:
        return ["The judge was not measured on a gold set (feedback.gold=null): nothing says whether this Elo means anything.", ""]
    halves = ", ".join(f"{name} {accuracy_cell(gold.get(key))}" for key, name in HALVES if key in gold)
    text = f"Judge accuracy on the gold set: {accuracy_cell(gold)} on {gold['count']} pairs ({halves}). " + verdict(gold, "judge")
    lo, hi = gold["ci95"]
    if lo <= 0.5 <= hi and elo_follows:
        text += " **Do not read the Elo below as a ranking of the models.**"
    return [text, ""]
