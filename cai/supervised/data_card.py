"""The SL data card: does the critique-revision data deserve to be trained on?

Counted from the records themselves (not accumulated per chunk), so a resumed or forced run
reports the same numbers as an uninterrupted one. Printed at the end of `generate`, written
to `sl_data_card.md`, and shown in the report.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cai.constitution import Constitution
from cai.supervised.chains import gate_names
from cai.supervised.gates import GATES

EXAMPLES_PER_SIDE = 3


def gate_statistics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest: revisions accepted/rejected, each gate's rejections, fallbacks, drops, principle use."""
    red = [r for r in records if r["kind"] == "red_team"]
    helpful = [r for r in records if r["kind"] == "helpful"]
    steps = [step for r in red for step in r["rounds"]]
    first_reason = Counter(gate_names(step["failures"])[0] for step in steps if not step["accepted"])
    any_reason = Counter(f for step in steps for f in gate_names(step["failures"]))
    last_rejected = [r for r in red if r["rounds"] and not r["rounds"][-1]["accepted"]]
    candidates = [c for step in steps for c in step.get("candidates", [])]
    candidate_reason = Counter(gate_names(c["failures"])[0] for c in candidates if c["failures"])
    return {
        "records": len(records),
        "red_team": len(red),
        "helpful": len(helpful),
        "revisions": len(steps),
        "revisions_accepted": sum(step["accepted"] for step in steps),
        "rejected_by_gate": {gate: first_reason[gate] for gate in GATES if first_reason[gate]},
        "failing_gate": {gate: any_reason[gate] for gate in GATES if any_reason[gate]},
        "candidates": len(candidates),
        "candidates_rejected_by_gate": {gate: candidate_reason[gate] for gate in GATES if candidate_reason[gate]},
        "red_team_targets": sum(bool(r["target"]) for r in red),
        "fallback_to_earlier_round": sum(bool(r["target"]) for r in last_rejected),
        "dropped_red_team": sum(not r["target"] for r in red),
        "helpful_targets": sum(bool(r["target"]) for r in helpful),
        "helpful_rejected_by_gate": dict(Counter(gate_names(r["rejected_reasons"])[0] for r in helpful if not r["target"])),
        "principle_usage": dict(Counter(step["principle_id"] for step in steps).most_common()),
        "principle_rules": dict(Counter(step["principle_rule"] for step in steps)),
        "mean_selection_margin": _mean([step["margin"] for step in steps if step.get("margin") is not None]),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary_lines(stats: dict[str, Any], card: Path) -> str:
    """The few lines the stage prints: is this data usable?"""
    revisions = stats["revisions"] or 1
    share = stats["revisions_accepted"] / revisions
    gates = ", ".join(f"{gate} {count}" for gate, count in stats["rejected_by_gate"].items()) or "none"
    sampled = ""
    if stats["candidates"]:
        rejected = sum(stats["candidates_rejected_by_gate"].values())
        sampled = f" (best of {stats['candidates']} samples, {rejected} of them rejected: " + (", ".join(f"{g} {c}" for g, c in stats["candidates_rejected_by_gate"].items()) or "none") + ")"
    lines = [
        f"[sl] quality gates: {stats['revisions_accepted']}/{stats['revisions']} revisions accepted ({share:.0%}){sampled}; rejected by {gates}",
        f"[sl] SFT targets: {stats['red_team_targets']}/{stats['red_team']} red-team prompts ({stats['fallback_to_earlier_round']} from an earlier round, "
        f"{stats['dropped_red_team']} dropped), {stats['helpful_targets']}/{stats['helpful']} helpful answers; data card: {card}",
    ]
    if stats["red_team"] and stats["red_team_targets"] < 0.5 * stats["red_team"]:
        lines.append("[sl] WARNING: fewer than half of the red-team prompts have a usable revision; the critic model may be too weak (see the rejected examples in the data card)")
    return "\n".join(lines)


def data_card(records: list[dict[str, Any]], stats: dict[str, Any], *, constitution: Constitution, settings: Any) -> str:
    """Markdown: counts per gate, principle usage, accepted and rejected revisions side by side."""
    out = [
        "# SL-CAI data card",
        "",
        f"Constitution `{constitution.name}` v{constitution.version} (hash `{constitution.content_hash}`); revision mode `{settings.revision_mode}`, "
        f"principle selection `{settings.principle_selection}`, {settings.revision_rounds} round(s), {settings.revision_samples} sample(s) per round, "
        + ("a critique before each revision." if settings.critique else "direct revisions (no critique)."),
        "",
        "| | count |",
        "|---|---|",
        f"| red-team chains | {stats['red_team']} |",
        f"| revisions accepted / generated | {stats['revisions_accepted']} / {stats['revisions']} |",
        f"| red-team prompts with a training target | {stats['red_team_targets']} |",
        f"| ... taken from an earlier round (last one rejected) | {stats['fallback_to_earlier_round']} |",
        f"| red-team prompts dropped (no revision passed) | {stats['dropped_red_team']} |",
        f"| helpful answers kept / generated | {stats['helpful_targets']} / {stats['helpful']} |",
        "",
        "## Rejections per gate",
        "",
        "| gate | rejected (first reason) | failed (any reason) |",
        "|---|---|---|",
    ]
    out += [f"| {gate} | {stats['rejected_by_gate'].get(gate, 0)} | {stats['failing_gate'].get(gate, 0)} |" for gate in GATES]
    if stats["candidates"]:
        rejected = ", ".join(f"{gate} {count}" for gate, count in stats["candidates_rejected_by_gate"].items()) or "none"
        out += ["", f"Best-of-n: {stats['candidates']} sampled revisions, rejected before selection: {rejected}."]
    out += ["", "## Principles drawn", "", "| principle | rounds |", "|---|---|"]
    out += [f"| {pid} | {count} |" for pid, count in stats["principle_usage"].items()]
    rules = ", ".join(f"{rule}: {count}" for rule, count in stats["principle_rules"].items())
    out += ["", f"Drawn by rule: {rules or 'none'}."]
    if stats.get("mean_selection_margin") is not None:
        out += [f"Mean best-of-n selection margin (likelihood ratio over the revised text): {stats['mean_selection_margin']:.3f}."]
    accepted = [r for r in records if r["kind"] == "red_team" and r["target"]][:EXAMPLES_PER_SIDE]
    rejected = [(r, step) for r in records if r["kind"] == "red_team" for step in r["rounds"] if not step["accepted"]][:EXAMPLES_PER_SIDE]
    out += ["", "## Accepted examples", ""]
    for record in accepted:
        out += [f"- **Prompt:** {_one_line(record['prompt'])}", f"  - response: {_one_line(record['response'])}", f"  - target: {_one_line(record['target'])}"]
    out += ["", "## Rejected examples", ""]
    for record, step in rejected:
        out += [f"- **Prompt:** {_one_line(record['prompt'])}", f"  - revision ({step['failures'].replace(',', ', ')}): {_one_line(step['revision'])}"]
    return "\n".join(out) + "\n"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."
