"""The report from a fabricated run directory: tables, valid PNGs, the Missing section, `cai report`."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_module, write_jsonl

from cai.evaluation.metrics import summarise
from cai.evaluation.report import Missing, build_report, headline_table, series

MODELS = ("base", "sl", "rl")
RED = [f"How do I do harmful thing number {i}?" for i in range(8)]
HELPFUL = [f"Explain useful topic number {i}, please." for i in range(6)]


def response(model: str, kind: str, i: int) -> str:
    """Base complies with everything, SL refuses everything, RL refuses harm and helps otherwise."""
    refuses = (model == "sl") or (model == "rl" and kind == "red_team")
    if refuses:
        return "I can't help with that." if model == "sl" else f"I can't help with that, but here is a safer idea number {i}: talk to someone you trust."
    return f"Sure! Step one for item {i}: gather what you need. Step two: follow the guide carefully and check your work."


def fabricate(run: Path, *, with_ppo: bool = True, policy_log: str = "policy.jsonl") -> dict:
    """A run directory as the stages leave it: JSONL logs, eval records and eval/metrics.json."""
    logs = run / "logs"
    logs.mkdir(parents=True)
    write_jsonl(logs / "sft.jsonl", [{"stage": "sft", "step": s, "loss": 2.0 / s} for s in range(1, 11)] + [{"stage": "sft", "step": 10, "train_runtime": 3.0}])
    write_jsonl(logs / "reward.jsonl", [{"stage": "reward", "step": s, "loss": 0.7 - 0.03 * s, "accuracy": 0.5 + 0.03 * s} for s in range(1, 9)])
    if with_ppo:
        rows = []
        for s in range(1, 13):
            rows.append(
                {
                    "stage": "policy",
                    "step": s,
                    "objective/scores": -1 + 0.1 * s,
                    "objective/kl": 0.01 * s,
                    "objective/entropy": 60 - s,
                    "loss/value_avg": 0.5 / s,
                    "monitor/response_length": 40 + s,
                    "monitor/distinct_2": 0.8,
                    "monitor/eos_rate": 0.9,
                    "val/ratio_var": None,
                }
            )
        write_jsonl(logs / policy_log, rows)
    prompts = [(f"ert-{i:02d}", p, "red_team", None) for i, p in enumerate(RED)] + [(f"ehp-{i:02d}", p, "helpful", "benign_edgy" if i == 0 else "writing") for i, p in enumerate(HELPFUL)]
    generations = {}
    for model in MODELS:
        rows = [{"id": pid, "prompt": text, "kind": kind, "category": cat, "model": model, "response": response(model, kind, i)} for i, (pid, text, kind, cat) in enumerate(prompts)]
        generations[model] = rows
        directory = run / "eval" / "generations" / model
        directory.mkdir(parents=True)
        write_jsonl(directory / "shard-00000.jsonl", rows)
    bonus = {"base": -0.5, "sl": 0.0, "rl": 0.8}
    scores = [{"model": m, "id": r["id"], "kind": r["kind"], "reward": bonus[m] + 0.05 * (i % 5)} for m in MODELS for i, r in enumerate(generations[m])]
    (run / "eval" / "scores").mkdir()
    write_jsonl(run / "eval" / "scores" / "shard-00000.jsonl", scores)
    strength = {"base": 0.0, "sl": 0.5, "rl": 1.0}
    judgements = []
    for r in generations["base"]:
        for a, b in (("base", "sl"), ("base", "rl"), ("sl", "rl")):
            p = 1 / (1 + math.exp(strength[b] - strength[a]))
            judgements.append(
                {
                    "id": f"{r['id']}|{a}|{b}",
                    "kind": r["kind"],
                    "model_a": a,
                    "model_b": b,
                    "p_a": p,
                    "identical": False,
                    "votes": [{"principle_id": "x", "first": 1, "p_a": min(1.0, p + 0.1)}, {"principle_id": "x", "first": 2, "p_a": max(0.0, 0.9 - p)}],
                }
            )
    labels = [{"id": "l1", "prompt": "x", "response": "I can't help with that.", "refusal": True}, {"id": "l2", "prompt": "y", "response": "Sure, here it is.", "refusal": False}]
    summary = summarise(list(MODELS), generations, scores=scores, judgements=judgements, labels=labels, rounds=50, seed=0)
    metrics = {
        "order": list(MODELS),
        "models": {m: f"/models/{m}" for m in MODELS},
        "prompts": {"red_team": {"source": "examples/eval_red_team.jsonl", "count": len(RED)}, "helpful": {"source": "examples/eval_helpful.jsonl", "count": len(HELPFUL)}},
        "decoding": {"temperature": 0.0, "max_new_tokens": 64},
        "reward_model": "/run/reward_model",
        "judge": {"model": "/models/base", "pairwise": True, "refusal": False, "principles": ["a", "b"], "principles_per_comparison": 2, "debias_positions": True, "bootstrap_rounds": 50},
        "refusal_labels": "examples/refusal_labels.jsonl",
        "constitution": {"name": "default", "version": "1.0", "hash": "abc"},
        "show_examples": 2,
        "log_dirs": [],
        "overlap_with_training": [],
        "skipped": [],
        **summary,
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_from_fabricated_run(tmp_path):
    run = tmp_path / "run"
    metrics = fabricate(run)
    report = build_report(run)
    text = report.path.read_text()
    assert report.path == run / "report" / "report.md"
    for section in ("## Headline", "## Reward-model scores", "## Pairwise preferences and Elo", "## Refusals", "## Response length and diversity", "## Training curves", "## Example generations"):
        assert section in text, section
    assert "## Missing" not in text and report.missing == []
    assert "Length-corrected" not in text  # the fabricated run's reward model has no length slope
    # headline row of rl: reward mean 0.8 + mean(0.05 * (i % 5)) over 14 responses, refusals 100% / 0%
    expected_rl = 0.8 + 0.05 * sum(i % 5 for i in range(14)) / 14
    assert f"| rl | {expected_rl:.3f} ±" in text
    refusals = text.split("## Refusals")[1]
    assert "| base | 0% | 0% | 0% |" in refusals and "| sl | 100% | 100% | 100% |" in refusals and "| rl | 100% | 0% | 0% |" in refusals
    # Elo follows the fabricated strengths and the example table shows all three models side by side
    ratings = metrics["elo"]["all"]["ratings"]
    assert ratings["rl"]["rating"] > ratings["sl"]["rating"] > ratings["base"]["rating"]
    assert "| prompt | base | sl | rl |" in text
    assert "How do I do harmful thing number 0?" in text
    names = {p.name for p in report.plots}
    assert names == {"training_loss.png", "policy.png", "reward_scores.png", "elo.png", "refusal.png"}
    for plot in report.plots:
        width, height = png_size(plot)
        assert width >= 400 and height >= 300, (plot, width, height)
        assert plot.stat().st_size > 10_000, plot
        assert f"]({plot.name})" in text


def test_report_says_when_the_reward_model_is_length_corrected():
    from cai.evaluation.report import reward_section

    metrics = {"order": ["sl"], "reward_model": "/run/reward_model", "reward": {"sl": {"all": {"count": 2, "mean": 0.1, "std": 0.0, "median": 0.1, "min": 0.1, "max": 0.1}}}}
    assert "Length-corrected" not in "\n".join(reward_section(metrics))
    assert "Length-corrected (`reward.length_correction`): +0.0140 per response token" in "\n".join(reward_section({**metrics, "reward_length_slope": 0.014}))


def test_report_reads_the_policy_log_of_a_run_made_before_the_rename(tmp_path):
    """Runs from before the `ppo` stage became `policy` wrote logs/ppo.jsonl; the report still draws it."""
    run = tmp_path / "run"
    fabricate(run, policy_log="ppo.jsonl")
    report = build_report(run)
    assert (run / "report" / "policy.png").is_file()
    assert not any(m.what == "logs/policy.jsonl" for m in report.missing)


def test_report_without_ppo_logs_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    fabricate(run, with_ppo=False)
    report = build_report(run)
    text = report.path.read_text()
    assert Missing("logs/policy.jsonl", "stage policy of cai/rl.py", "the policy-optimisation plot (reward, KL, entropy)") in report.missing
    assert "## Missing" in text and "logs/policy.jsonl" in text.split("## Missing")[1] and "stage policy" in text
    assert not (run / "report" / "policy.png").exists()
    assert (run / "report" / "elo.png").is_file() and "## Headline" in text


def test_report_from_training_logs_only_lists_the_eval_stage(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    write_jsonl(run / "logs" / "sft.jsonl", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": None}])
    (run / "logs" / "sft.jsonl").open("a").write('{"step": 4, "loss": 0.5')  # a line cut off by a killed writer
    report = build_report(run)
    text = report.path.read_text()
    assert [p.name for p in report.plots] == ["training_loss.png"]
    assert not report.has_eval and "eval/metrics.json" in text.split("## Missing")[1]
    assert "## Headline" not in text


def test_series_takes_the_first_logged_key_and_skips_gaps():
    entries = [{"step": 1, "kl": 0.5}, {"step": 2, "objective/kl": None, "kl": 0.25}, {"step": 3, "objective/kl": 0.1}]
    assert series(entries, ["objective/kl", "kl"]) == ("objective/kl", [3.0], [0.1])
    assert series(entries, ["kl"]) == ("kl", [1.0, 2.0], [0.5, 0.25])
    assert series(entries, ["entropy"]) is None
    resumed = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 1.0}]
    assert series(resumed, ["loss"]) == ("loss", [1.0, 2.0, 3.0], [3.0, 2.5, 1.0])


def test_headline_table_by_hand():
    metrics = {
        "order": ["a"],
        "reward": {"a": {"all": {"count": 2, "mean": 0.25, "std": 0.05}}},
        "elo": {"red_team": {"ratings": {"a": {"rating": 1012.4, "low": 990.1, "high": 1030.7}}}},
        "refusal": {"a": {"patterns": {"refusal_rate": 0.75, "over_refusal_rate": 0.1}}},
        "responses": {"a": {"all": {"mean_words": 12.25, "distinct_2": 0.5}}},
    }
    lines = headline_table(metrics).splitlines()
    assert lines[2] == "| a | 0.250 ± 0.050 | 1012 [990, 1031] | n/a | 75% | 10% | 12.2 | 0.500 |"


def test_cai_report_command(tmp_path):
    run = tmp_path / "run"
    fabricate(run)
    result = run_module("report", str(run))
    assert result.returncode == 0, result.stderr
    assert f"{run / 'report' / 'report.md'}" in result.stdout and "| rl |" in result.stdout


def test_cai_report_without_eval_is_one_line_but_still_builds(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    write_jsonl(run / "logs" / "sft.jsonl", [{"step": 1, "loss": 1.0}])
    result = run_module("report", str(run))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cai: error: ") and "eval/metrics.json" in lines[0] and "stages=eval" in lines[0]
    assert (run / "report" / "report.md").is_file() and (run / "report" / "training_loss.png").is_file()


def test_cai_report_on_missing_directory(tmp_path):
    result = run_module("report", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such run directory" in lines[0] and "Traceback" not in result.stderr


def test_report_builds_without_torch(tmp_path):
    """`python -m cai report` must stay fast: the report path never imports torch."""
    run = tmp_path / "run"
    fabricate(run)
    code = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; from cai.evaluation.report import build_report; print(len(build_report(sys.argv[1]).plots))"
    result = subprocess.run([sys.executable, "-c", code, str(run)], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


@pytest.mark.parametrize("text, expected", [("a|b\nc", "a\\|b<br>c"), ("", "*(empty)*"), ("x" * 10, "xxxx...")])
def test_table_cells_are_escaped_and_cut(text, expected):
    from cai.evaluation.report import cell

    assert cell(text, 7 if len(text) == 10 else None) == expected


def test_report_lists_stage_times_and_the_running_stage_so_far(tmp_path):
    import time

    run = tmp_path / "run"
    fabricate(run)
    stages = {"generate": {"status": "done", "seconds": 75.0}, "sft": {"status": "done", "seconds": 30.4}, "policy": {"status": "done", "seconds": 200.0}, "eval": {"status": "done", "started": time.time() - 125}}  # done, but its time not yet recorded
    (run / "manifest.json").write_text(json.dumps({"stages": stages}))
    text = build_report(run).path.read_text()
    section = text.split("## Stage times")[1].split("\n## ")[0]
    assert "| generate | 1m15s |" in section and "| sft | 30s |" in section and "| policy | 3m20s |" in section
    import re

    assert re.search(r"\| eval \| 2m[0-5]\ds \(so far", section), section  # 125 s plus however long the plots took
    assert "| **total** | 7m" in section
    assert "sample" not in section  # never ran: no row
