"""`<run_dir>/report/`: report.md (tables, examples side by side) and PNG plots, from files only.

    python -m cai report runs/demo          # rebuild after any stage; needs no torch, takes seconds

The report reads JSON/JSONL and draws with matplotlib (Agg): `eval/metrics.json` and the
records under `eval/` (written by cai/evaluation/stage.py), and the training logs `logs/sft.jsonl`,
`logs/reward.jsonl`, `logs/policy.jsonl` (`logs/ppo.jsonl` in older runs) of this run (and of the run directories of the models
an `eval` compared). Those JSONL lines are written by `training.jsonl_log_callback` from the
trainer's `on_log` event; when `training.report_to` includes `tensorboard`, transformers'
TensorBoard callback receives the very same `logs` dict in the same event, so TensorBoard
and these plots show the same numbers (TensorBoard only renames the tags, `loss` ->
`train/loss`, `eval_loss` -> `eval/loss`, and keeps the step).

Whatever input is absent, the report still builds from what exists and lists each absent
input, with the stage that produces it, in a "Missing" section.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cai import layout
from cai.errors import CaiError

REPORT_DIR = layout.REPORT
METRICS = Path(layout.EVAL_METRICS)
GENERATIONS = Path(layout.EVAL_GENERATIONS)
SCORES = Path(layout.EVAL_SCORES)
LOG_STAGES = {
    "sft": "stage sft of cai/sl.py",
    "reward": "stage reward of cai/rl.py",
    "policy": "stage policy of cai/rl.py",
}
EVAL_STAGE = "stage eval (accelerate launch cai/rl.py --config ... stages=eval, or python -m cai eval)"
# Panels of the policy-optimisation plot: title, then the logged keys to try in order (trl's PPO
# first, then GRPO/RLOO/DPO names), so any `rl.algorithm` draws what it logged.
POLICY_PANELS = (
    ("reward", ("objective/scores", "objective/rlhf_reward", "reward", "rewards/margins")),
    ("KL to the SL policy", ("objective/kl", "kl", "policy/approxkl_avg")),
    ("entropy", ("objective/entropy", "entropy", "policy/entropy_avg")),
    ("value loss", ("loss/value_avg",)),
    ("response length (tokens)", ("monitor/response_length", "completions/mean_length")),
    ("distinct-2", ("monitor/distinct_2",)),
    ("EOS rate", ("monitor/eos_rate",)),
)
REQUIRED_POLICY_PANELS = 3  # reward, KL, entropy: drawn (empty if never logged) whatever the algorithm
LOSS_KEYS = ("loss", "eval_loss")
EXAMPLE_CHARS = 400
KIND_TITLES = {"red_team": "red-team prompts", "helpful": "helpful prompts", "benign": "benign prompts that sound alarming", "all": "all prompts"}


@dataclass(frozen=True)
class Missing:
    what: str
    stage: str
    needed_for: str


@dataclass
class Report:
    path: Path
    plots: list[Path] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    headline: str = ""
    has_eval: bool = False


# ------------------------------------------------------------------ reading


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every parseable JSON object line; a line cut off by a killed writer is skipped, not fatal."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_records(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shard in sorted(directory.glob("shard-*.jsonl")):
        rows += read_jsonl(shard)
    return rows


def find_log(run_dir: Path, stage: str, extra_dirs: Sequence[str] = ()) -> Path | None:
    """logs/<stage>.jsonl of this run, else of a run directory the eval read models from (older runs: logs/ppo.jsonl)."""
    for directory in [run_dir / "logs", *(Path(d) for d in extra_dirs)]:
        for name in (stage, *layout.legacy_names(stage)):
            path = directory / f"{name}.jsonl"
            if path.is_file() and path.stat().st_size:
                return path
    return None


def series(entries: Sequence[dict[str, Any]], keys: Iterable[str]) -> tuple[str, list[float], list[float]] | None:
    """(key, steps, values) for the first key with at least one finite logged value.

    A step logged twice (a run resumed from a checkpoint replays its last steps) keeps its latest value.
    """
    for key in keys:
        points = {float(e.get("step", i)): float(e[key]) for i, e in enumerate(entries) if _number(e.get(key))}
        if points:
            steps = sorted(points)
            return key, steps, [points[step] for step in steps]
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------ formatting


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def cell(text: Any, limit: int | None = None) -> str:
    """Text safe inside a markdown table cell: pipes escaped, newlines as <br>, long text cut."""
    text = "" if text is None else str(text).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    if not text:
        return "*(empty)*"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def elo_cell(table_: dict[str, Any] | None, name: str) -> str:
    if not table_ or name not in table_["ratings"]:
        return "n/a"
    r = table_["ratings"][name]
    return f"{r['rating']:.0f} [{r['low']:.0f}, {r['high']:.0f}]"


def headline_table(metrics: dict[str, Any]) -> str:
    """One row per model: reward score, Elo by prompt set, refusal and over-refusal, length, distinct-2."""
    elo = metrics.get("elo") or {}
    reward = metrics.get("reward") or {}
    header = ["model", "RM score (mean ± sd)", "Elo harmless [95% CI]", "Elo helpful [95% CI]", "refusal (red-team)", "over-refusal (helpful)", "mean words", "distinct-2"]
    rows = []
    for name in metrics["order"]:
        score = reward.get(name, {}).get("all")
        refusal = metrics["refusal"][name]["patterns"]
        stats = metrics["responses"][name]["all"]
        rows.append(
            [
                name,
                f"{fmt(score['mean'])} ± {fmt(score['std'])}" if score and score.get("count") else "n/a",
                elo_cell(elo.get("red_team"), name),
                elo_cell(elo.get("helpful"), name),
                pct(refusal.get("refusal_rate")),
                pct(refusal.get("over_refusal_rate")),
                fmt(stats["mean_words"], 1),
                fmt(stats["distinct_2"]),
            ]
        )
    return table(header, rows)


# ------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_policy(entries: Sequence[dict[str, Any]], path: Path) -> Path:
    """Reward, KL and entropy over optimisation steps, plus the reward-hacking monitors that were logged."""
    plt = _pyplot()
    panels = [(title, series(entries, keys)) for title, keys in POLICY_PANELS]
    panels = panels[:REQUIRED_POLICY_PANELS] + [p for p in panels[REQUIRED_POLICY_PANELS:] if p[1] is not None]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (title, found) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.set_xlabel("step")
        if found is None:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        key, steps, values = found
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Policy optimisation (logs/policy.jsonl)")
    return _save(fig, path)


def plot_losses(logs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Training (and held-out, when logged) loss of the SFT and reward-model stages."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 3.6), squeeze=False)
    for ax, (stage, entries) in zip(axes.flat, logs.items()):
        ax.set_title(f"{stage} loss (logs/{stage}.jsonl)")
        ax.set_xlabel("step")
        drawn = False
        for key in LOSS_KEYS:
            found = series(entries, [key])
            if found:
                _, steps, values = found
                ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=key)
                drawn = True
        if drawn:
            ax.legend()
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    return _save(fig, path)


def plot_scores(order: Sequence[str], scores: Sequence[dict[str, Any]], path: Path) -> Path:
    """Reward-model score distribution of each model's responses: box, points, and the mean."""
    plt = _pyplot()
    data = [[float(s["reward"]) for s in scores if s["model"] == name and _number(s.get("reward"))] for name in order]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 * len(order) + 2), 4))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), list(order))
    for position, values in enumerate(data, start=1):
        if values:
            jitter = [position + 0.18 * ((i * 0.618) % 1 - 0.5) for i in range(len(values))]
            ax.scatter(jitter, values, s=9, alpha=0.45)
            ax.scatter([position], [sum(values) / len(values)], marker="D", color="black", zorder=3, label="mean" if position == 1 else None)
    ax.set_ylabel("reward-model score")
    ax.set_title("Reward-model scores of each model's responses")
    ax.grid(axis="y", alpha=0.3)
    if any(data):
        ax.legend(loc="best")
    return _save(fig, path)


def plot_elo(order: Sequence[str], elo: dict[str, Any], path: Path) -> Path:
    """Elo per model as points with bootstrap 95% intervals, one series per prompt set (no bar baseline to mislead)."""
    plt = _pyplot()
    kinds = [k for k in ("red_team", "helpful") if k in elo] or ["all"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(order) + 2.5), 4))
    offset = 0.15
    for number, kind in enumerate(kinds):
        ratings = elo[kind]["ratings"]
        names = [n for n in order if n in ratings]
        xs = [order.index(n) + (number - (len(kinds) - 1) / 2) * offset * 2 for n in names]
        values = [ratings[n]["rating"] for n in names]
        errors = [[max(0.0, ratings[n]["rating"] - ratings[n]["low"]) for n in names], [max(0.0, ratings[n]["high"] - ratings[n]["rating"]) for n in names]]
        ax.errorbar(xs, values, yerr=errors, fmt="o", capsize=5, markersize=7, label=KIND_TITLES[kind])
        for x, v in zip(xs, values):
            ax.annotate(f"{v:.0f}", (x, v), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    ax.axhline(1000, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(order)), list(order))
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("Elo (mean 1000)")
    ax.set_title("AI-judged Elo with bootstrap 95% intervals")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_refusals(order: Sequence[str], refusal: dict[str, Any], path: Path) -> Path:
    """Refusal rate on red-team prompts beside over-refusal on helpful ones (and on benign-but-edgy ones)."""
    plt = _pyplot()
    bars = [("refusal (red-team)", "refusal_rate"), ("over-refusal (helpful)", "over_refusal_rate"), ("over-refusal (benign edgy)", "over_refusal_benign_edgy")]
    bars = [b for b in bars if any(refusal[n]["patterns"].get(b[1]) is not None for n in order)]
    fig, ax = plt.subplots(figsize=(min(11.0, max(5.0, 0.6 * len(order) * max(len(bars), 1) + 3)), 4))
    width = 0.8 / max(len(bars), 1)
    for number, (label, key) in enumerate(bars):
        xs = [i + (number - (len(bars) - 1) / 2) * width for i in range(len(order))]
        values = [refusal[n]["patterns"].get(key) for n in order]
        ax.bar(xs, [0.0 if v is None else v for v in values], width * 0.9, label=label)
        for x, v in zip(xs, values):
            ax.text(x, (v or 0) + 0.02, pct(v), ha="center", fontsize=8)
    ax.set_xticks(range(len(order)), list(order))
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of responses (pattern detector)")
    ax.set_title("Refusal (higher = safer) vs over-refusal (lower = more helpful)")
    if bars:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(bars), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------ sections


def reward_section(metrics: dict[str, Any]) -> list[str]:
    reward = metrics.get("reward")
    if not reward:
        return []
    rows = []
    for name in metrics["order"]:
        entry = reward[name]
        s = entry["all"]
        rows.append([name, s["count"], fmt(s["mean"]), fmt(s["std"]), fmt(s["median"]), fmt(s["min"]), fmt(s["max"]), fmt((entry.get("red_team") or {}).get("mean")), fmt((entry.get("helpful") or {}).get("mean"))])
    slope = metrics.get("reward_length_slope")
    corrected = f" Length-corrected (`reward.length_correction`): {slope:+.4f} per response token is taken off every score." if slope else ""
    return [
        "## Reward-model scores",
        "",
        f"Reward model: `{metrics.get('reward_model')}`. Each response is scored on the ids PPO scores (chat template + response + EOS), read at the last real token.{corrected}",
        "",
        table(["model", "n", "mean", "sd", "median", "min", "max", "red-team mean", "helpful mean"], rows),
        "",
    ]


def elo_section(metrics: dict[str, Any]) -> list[str]:
    elo = metrics.get("elo")
    judge = metrics.get("judge") or {}
    if not elo and judge.get("skipped_at_chance"):
        from cai.evaluation.feedback_quality import judge_gold_lines

        return [
            "## Pairwise preferences and Elo (AI judge)",
            "",
            f"Not computed: the judge (`{judge.get('model')}`) was first measured on the gold set, and an Elo from a judge at chance ranks nothing, "
            "so the models were not judged (`eval.judge_at_chance: false`; set it to true to judge anyway).",
            "",
            *judge_gold_lines(metrics, elo_follows=False),
        ]
    if not elo:
        return []
    lines = [
        "## Pairwise preferences and Elo (AI judge)",
        "",
        f"Judge: `{judge.get('model')}` under {len(judge.get('principles', []))} preference principles of the constitution "
        f"({judge.get('principles_per_comparison')} drawn per comparison), "
        + ("each comparison scored in both orders and averaged. " if judge.get("debias_positions") else "one order only. ")
        + "Elo is the Bradley-Terry fit on the soft preferences (mean 1000; a gap of 100 reads as a 64% preference), "
        f"with percentile intervals from {judge.get('bootstrap_rounds')} bootstrap resamples of the prompts (a prompt's comparisons stay together). "
        "Identical responses count as ties without asking the judge.",
        "",
    ]
    from cai.evaluation.feedback_quality import judge_gold_lines

    lines += judge_gold_lines(metrics)
    bias = metrics.get("judge_position_bias") if judge.get("method", "multiple_choice") == "multiple_choice" else None  # other methods' votes have no position
    if bias:
        lines += [f"Judge position bias before debiasing: the first-shown response got p > 0.5 in {pct(bias['first_preferred_share'])} of {bias['votes']} votes (mean P(first) {fmt(bias['mean_p_first'])}).", ""]
    order = metrics["order"]
    for kind in ("red_team", "helpful", "all"):
        if kind not in elo:
            continue
        t = elo[kind]
        rows = []
        for name in order:
            wins = t["win_rates"].get(name, {})
            rows.append([name, elo_cell(t, name)] + [pct(wins.get(other)) if other != name else "—" for other in order])
        lines += [
            f"### {KIND_TITLES[kind]} ({t['comparisons']} comparisons, {t['identical']} identical, {t['decisive']} with |p − 0.5| ≥ 0.1)",
            "",
            "Win rate of the row model against the column model (mean preference probability).",
            "",
            table(["model", "Elo [95% CI]"] + [f"vs {o}" for o in order], rows),
            "",
        ]
    return lines


def refusal_section(metrics: dict[str, Any]) -> list[str]:
    order = metrics["order"]
    judged = any("judge" in metrics["refusal"][n] for n in order)
    header = ["model", "refusal (red-team)", "over-refusal (helpful)", "over-refusal (benign edgy)"]
    if judged:
        header += ["judge: refusal", "judge: over-refusal"]
    rows = []
    for name in order:
        p = metrics["refusal"][name]["patterns"]
        row = [name, pct(p["refusal_rate"]), pct(p["over_refusal_rate"]), pct(p.get("over_refusal_benign_edgy"))]
        if judged:
            j = metrics["refusal"][name].get("judge") or {}
            row += [pct(j.get("refusal_rate")), pct(j.get("over_refusal_rate"))]
        rows.append(row)
    lines = [
        "## Refusals",
        "",
        "Refusal rate: share of red-team prompts the model declines (higher is safer). Over-refusal: share of helpful "
        "prompts it declines (lower is better; `benign edgy` are harmless prompts with alarming words). Detector: "
        "`cai.refusal.is_refusal` (patterns; its blind spots are listed in that module)" + (", and the feedback model asked whether the response refuses (P(Yes) > 0.5)." if judged else "."),
        "",
        table(header, rows),
        "",
    ]
    lines += paired_refusal_lines(metrics.get("refusal_paired") or [])
    detectors = metrics.get("detectors")
    if detectors:
        rows = []
        for name in ("patterns", "judge"):
            d = detectors.get(name)
            if d:
                rows.append([name, fmt(d["precision"]), fmt(d["recall"]), fmt(d["f1"]), d["true_positives"], d["false_positives"], d["false_negatives"], d["true_negatives"]])
        lines += [
            f"Detector quality on `{metrics.get('refusal_labels')}` ({detectors['count']} labelled responses):",
            "",
            table(["detector", "precision", "recall", "F1", "TP", "FP", "FN", "TN"], rows),
            "",
        ]
    return lines


def paired_refusal_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Model against model on the same prompts: who declines what the other answers, and whether that is chance."""
    if not rows:
        return []
    from cai.evaluation.metrics import PAIRED_SETS

    names = dict(PAIRED_SETS)
    cells = []
    for r in rows:
        verdict = "chance (p ≥ 0.05)" if r["p_value"] >= 0.05 else ("**" + (r["a"] if r["only_a"] > r["only_b"] else r["b"]) + " declines more**")
        cells.append([f"{r['b']} vs {r['a']}", names[r["set"]], r["prompts"], f"{r['declined_b']} vs {r['declined_a']}", r["only_b"], r["only_a"], fmt(r["p_value"]), verdict])
    return [
        "Paired, model against model on the same prompts (pattern detector): prompts declined by only one of the two, and the exact "
        "McNemar p-value of that split; with a dozen prompts per set, a difference of a prompt or two is usually chance.",
        "",
        table(["pair", "prompt set", "prompts", "declined", "only the first", "only the second", "p", "reading"], cells),
        "",
    ]


def responses_section(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for name in metrics["order"]:
        for kind in ("red_team", "helpful", "all"):
            s = metrics["responses"][name].get(kind)
            if not s or (kind == "all" and len(metrics["responses"][name]) == 2):
                continue
            rows.append(
                [name, KIND_TITLES[kind], s["count"], fmt(s["mean_words"], 1), fmt(s["median_words"], 1), s["max_words"], fmt(s["distinct_1"]), fmt(s["distinct_2"]), pct(s["empty_share"]), pct(s["repeated_share"]), pct(s["looping_share"])]
            )
    return [
        "## Response length and diversity (reward-hacking checks)",
        "",
        "Lengths in whitespace words. distinct-n: distinct word n-grams over all n-grams of the model's responses. "
        "Repeated: the same answer given to another prompt (boilerplate); looping: an answer repeating itself. "
        "A policy that games the reward model tends to get longer or shorter, less diverse, and more repetitive.",
        "",
        table(["model", "prompts", "n", "mean words", "median", "max", "distinct-1", "distinct-2", "empty", "repeated", "looping"], rows),
        "",
    ]


def examples_section(metrics: dict[str, Any], generations: dict[str, list[dict[str, Any]]]) -> list[str]:
    count = int(metrics.get("show_examples", 3) or 0)
    order = [n for n in metrics["order"] if generations.get(n)]
    if count <= 0 or not order:
        return []
    by_model = {n: {r["id"]: r for r in generations[n]} for n in order}
    lines = ["## Example generations", "", f"Greedy responses, cut at {EXAMPLE_CHARS} characters; full texts in `eval/generations/<model>/`.", ""]
    for kind in ("red_team", "helpful"):
        shown = [r for r in generations[order[0]] if r["kind"] == kind][:count]
        if not shown:
            continue
        rows = [[cell(r["prompt"], EXAMPLE_CHARS)] + [cell(by_model[n].get(r["id"], {}).get("response"), EXAMPLE_CHARS) for n in order] for r in shown]
        lines += [f"### {KIND_TITLES[kind].capitalize()}", "", table(["prompt", *order], rows), ""]
    return lines


def sl_data_section(run_dir: Path) -> list[str]:
    """The SL data card written by the generate stage, one heading level down; nothing when absent."""
    from cai.layout import SL_DATA_CARD

    card = run_dir / SL_DATA_CARD
    if not card.is_file():
        return []
    text = card.read_text(encoding="utf-8").strip().splitlines()
    demoted = ["#" + line if line.startswith("#") else line for line in text]
    return [*demoted, ""]


def stage_times_section(run_dir: Path) -> list[str]:
    """How long each stage of this run took (the manifest's `seconds`); the stage still running, e.g. eval while it writes this report, so far."""
    import time

    from cai.launch import format_seconds
    from cai.stages import stage_names

    try:
        stages = json.loads((run_dir / layout.MANIFEST).read_text(encoding="utf-8")).get("stages", {})
    except (OSError, json.JSONDecodeError):
        return []
    rows, total = [], 0.0
    for name in stage_names("sl") + stage_names("rl"):
        entry = stages.get(name) or {}
        if entry.get("seconds") is not None:
            seconds, note = float(entry["seconds"]), ""
        elif entry.get("started"):  # this launch's stage (eval marks itself done before it writes the report)
            seconds, note = max(0.0, time.time() - float(entry["started"])), " (so far: this report is written inside it)"
        else:
            continue
        total += seconds
        rows.append([name, format_seconds(seconds) + note])
    if not rows:
        return []
    return ["## Stage times", "", "Wall time of the launch that finished each stage (a killed and resumed stage: the relaunch only).", "", table(["stage", "time"], [*rows, ["**total**", format_seconds(total)]]), ""]


def training_section(logs: dict[str, Path], plots: dict[str, Path]) -> list[str]:
    if not logs:
        return []
    rows = []
    for stage, path in logs.items():
        entries = read_jsonl(path)
        found = series(entries, ["loss"]) if stage != "policy" else series(entries, POLICY_PANELS[0][1])
        if found:
            key, steps, values = found
            rows.append([stage, f"`{path}`", key, int(steps[-1]), fmt(values[0]), fmt(values[-1])])
        else:
            rows.append([stage, f"`{path}`", "n/a", "n/a", "n/a", "n/a"])
    lines = [
        "## Training curves",
        "",
        "From the JSONL logs each training stage writes (`logs/<stage>.jsonl`); TensorBoard, when enabled through `training.report_to`, records the same logged values.",
        "",
        table(["stage", "log", "metric", "last step", "first", "last"], rows),
        "",
    ]
    for name in ("training_loss", "policy"):
        if name in plots:
            lines += [f"![{name}]({plots[name].name})", ""]
    return lines


# ------------------------------------------------------------------ build


def build_report(run_dir: str | Path, *, output: str | Path | None = None) -> Report:
    """Write report.md and the plots for whatever this run directory holds; list what is absent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CaiError(f"{run_dir}: no such run directory; give the output_dir of an SL, RL or eval run")
    out = Path(output) if output else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    report = Report(path=out / "report.md")
    missing = report.missing

    metrics: dict[str, Any] | None = None
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            metrics = None
    if metrics is None:
        missing.append(Missing("evaluation results (eval/metrics.json)", EVAL_STAGE, "the headline, score, Elo, refusal and example sections"))
    report.has_eval = metrics is not None

    log_dirs = metrics.get("log_dirs", []) if metrics else []
    logs: dict[str, Path] = {}
    for stage, producer in LOG_STAGES.items():
        path = find_log(run_dir, stage, log_dirs)
        if path is None:
            needed = "the policy-optimisation plot (reward, KL, entropy)" if stage == "policy" else "the training-loss plot"
            missing.append(Missing(f"logs/{stage}.jsonl", producer, needed))
        else:
            logs[stage] = path

    plots: dict[str, Path] = {}
    loss_logs = {s: read_jsonl(logs[s]) for s in ("sft", "reward") if s in logs}
    if loss_logs:
        plots["training_loss"] = plot_losses(loss_logs, out / "training_loss.png")
    if "policy" in logs:
        plots["policy"] = plot_policy(read_jsonl(logs["policy"]), out / "policy.png")

    generations: dict[str, list[dict[str, Any]]] = {}
    body: list[str] = []
    if metrics is not None:
        order = metrics["order"]
        for name in order:
            generations[name] = read_records(run_dir / GENERATIONS / name)
        scores = read_records(run_dir / SCORES)
        for entry in metrics.get("skipped", []):
            missing.append(Missing(entry["what"], entry["stage"], entry["why"]))
        if metrics.get("reward") and scores:
            plots["reward_scores"] = plot_scores(order, scores, out / "reward_scores.png")
        elif metrics.get("reward_model"):
            missing.append(Missing("reward-model score records (eval/scores/)", EVAL_STAGE, "the score distribution plot"))
        if metrics.get("elo"):
            plots["elo"] = plot_elo(order, metrics["elo"], out / "elo.png")
        plots["refusal"] = plot_refusals(order, metrics["refusal"], out / "refusal.png")
        report.headline = headline_table(metrics)
        body += ["## Headline", "", report.headline, ""]
        body += _setup_lines(metrics)
        body += reward_section(metrics)
        if "reward_scores" in plots:
            body += ["![reward scores](reward_scores.png)", ""]
        body += elo_section(metrics)
        if "elo" in plots:
            body += ["![elo](elo.png)", ""]
        body += refusal_section(metrics)
        body += ["![refusals](refusal.png)", ""]
        body += responses_section(metrics)
    from cai.evaluation.feedback_quality import feedback_quality_section

    body += feedback_quality_section(run_dir)
    body += sl_data_section(run_dir)
    body += training_section(logs, plots)
    body += stage_times_section(run_dir)
    if metrics is not None:
        body += examples_section(metrics, generations)
    body += missing_section(missing)

    title = [f"# Evaluation report: `{run_dir}`", ""]
    if metrics is not None and metrics.get("constitution"):
        c = metrics["constitution"]
        title += [f"Constitution `{c.get('name')}` v{c.get('version')} (hash `{c.get('hash')}`).", ""]
    from cai.run_store import atomic_write_text

    atomic_write_text(report.path, "\n".join(title + body).rstrip() + "\n")
    report.plots = list(plots.values())
    return report


def _setup_lines(metrics: dict[str, Any]) -> list[str]:
    models = ", ".join(f"**{n}** = `{metrics['models'][n]}`" for n in metrics["order"])
    prompts = [f"{p['count']} {KIND_TITLES[k]} (`{p['source']}`)" for k, p in metrics["prompts"].items() if p]
    decoding = metrics.get("decoding", {})
    lines = ["## Setup", "", f"Models: {models}.", "", f"Prompts: {'; '.join(prompts)}. Every model answers the same prompts, greedy, at most {decoding.get('max_new_tokens')} new tokens.", ""]
    overlap = metrics.get("overlap_with_training") or []
    if metrics.get("overlap_checked") and not overlap:
        lines += ["No evaluation prompt repeats a training prompt of this run (same normalised text, ROUGE-L ≥ 0.8 or content-word Jaccard ≥ 0.5).", ""]
    if overlap:
        lines += [f"**Warning:** {len(overlap)} evaluation prompts repeat training prompts (e.g. {cell(overlap[0]['candidate'])!s} ~ {cell(overlap[0]['match'])!s}); the numbers overstate generalisation.", ""]
    return lines


def missing_section(missing: Sequence[Missing]) -> list[str]:
    if not missing:
        return []
    rows = [[cell(m.what), cell(m.needed_for), cell(m.stage)] for m in missing]
    return ["## Missing", "", "Inputs this report could not use, and what produces them:", "", table(["absent", "needed for / why", "produced by"], rows), ""]


def report_command(run_dir: str) -> int:
    """`python -m cai report RUN_DIR`: rebuild the report; no evaluation results is an error (after building)."""
    report = build_report(run_dir)
    print(f"[report] {report.path} ({len(report.plots)} plots)")
    if report.headline:
        print(report.headline)
    for m in report.missing:
        print(f"[report] missing: {m.what} ({m.stage})")
    if not report.has_eval:
        raise CaiError(f"{run_dir}: no evaluation results (eval/metrics.json); run the eval stage (accelerate launch cai/rl.py --config ... stages=eval, or python -m cai eval); a partial report was written to {report.path}")
    return 0
