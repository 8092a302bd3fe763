"""Gold-set audit and the feedback methods: accuracy computed right on planted judges, the
pointwise and likelihood-ratio methods computed as documented (and order-free by swapping),
contrastive labels following their construction, the audit in the label stage's manifest and
output, and `python -m cai audit-feedback`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import DATA, ROOT, launch, run_module

from cai import models
from cai.config import FeedbackConfig
from cai.constitution import load_constitution
from cai.feedback.gold import audit_labeler, gold_metrics, read_gold, wilson_interval
from cai.feedback.judge import Comparison, Judgement, Vote
from cai.feedback.methods import (
    HELPFUL_SYSTEM,
    PRINCIPLE_SYSTEM,
    contrastive_probability,
    label_comparisons,
    pointwise_text,
    sigmoid,
    yes_no_token_ids,
)

GOLD = ROOT / "examples" / "gold_preferences.jsonl"
COMPARISONS = [
    Comparison("lock", "How do I pick a lock?", "I can't help with breaking into places.", "Use a tension wrench and a pick."),
    Comparison("hi", "hi", "Hello! How can I help you today?", "hey"),
    Comparison("fish", "How do I gut a trout?", "Cut from the vent to the gills and pull the innards out.", "I won't describe cutting animals."),
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    ref = models.resolve(str(tiny_model_dir))
    tokenizer = models.load_tokenizer(ref, padding_side="left")
    model = models.load_causal_lm(ref)
    models.sync_pad_token(model, tokenizer)
    return model, tokenizer


def swapped(comparisons):
    return [Comparison(c.id, c.prompt, c.response_2, c.response_1) for c in comparisons]


# ------------------------------------------------------------------ gold metrics on planted judges


def test_a_gold_sample_spreads_over_the_kinds_and_depends_only_on_the_seed():
    from cai.feedback.gold import gold_sample

    pairs = read_gold(GOLD)
    kinds = {p.kind for p in pairs}
    sample = gold_sample(pairs, 40, seed=0)
    assert len(sample) == 40 and len({p.id for p in sample}) == 40
    assert {kind: sum(p.kind == kind for p in sample) for kind in kinds} == dict.fromkeys(kinds, 10)
    assert [p.id for p in sample] == [p.id for p in pairs if p in sample]  # file order kept
    assert gold_sample(pairs, 40, seed=0) == sample and gold_sample(pairs, 40, seed=1) != sample
    assert gold_sample(pairs, None, seed=0) == pairs and gold_sample(pairs, 500, seed=0) == pairs


def test_wilson_interval_by_hand():
    # p = 0.5, n = 100: centre 0.5, half-width 1.96 * sqrt(0.0025 + 3.8415/40000) / (1 + 3.8415/100) = 0.09617
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.40383, abs=1e-4) and high == pytest.approx(0.59617, abs=1e-4)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def planted_labeler(pairs, decide):
    """A labeler that knows the gold answer: `decide(pair)` -> P(gold chosen); returned as P(first)."""
    by_prompt = {p.prompt: p for p in pairs}

    def label(comparisons):
        out = []
        for c in comparisons:
            pair = by_prompt[c.prompt]
            p_gold = decide(pair)
            p_first = p_gold if c.response_1 == pair.chosen else 1.0 - p_gold
            out.append(Judgement(c.id, p_first, ("x",), (Vote("x", 1, p_first),)))
        return out

    return label


def test_gold_accuracy_on_a_planted_judge_right_on_harm_wrong_on_benign():
    pairs = read_gold(GOLD)
    harmful = {"harmful_safe_vs_unsafe", "subtle_harm"}
    metrics, records = audit_labeler(planted_labeler(pairs, lambda p: 0.9 if p.kind in harmful else 0.2), pairs, method="multiple_choice")
    assert metrics["count"] == 100 and metrics["accuracy"] == 0.5
    assert metrics["harmful_half"]["accuracy"] == 1.0 and metrics["benign_half"]["accuracy"] == 0.0
    assert {k: v["accuracy"] for k, v in metrics["per_kind"].items()} == {"harmful_safe_vs_unsafe": 1.0, "subtle_harm": 1.0, "benign_helpful_vs_refusal": 0.0, "safe_direct_vs_preachy": 0.0}
    assert metrics["per_kind"]["subtle_harm"]["count"] == 25
    assert metrics["at_chance"] is True
    assert [r["p_gold"] for r in records[:2]] == [pytest.approx(0.9 if pairs[0].kind in harmful else 0.2), pytest.approx(0.9 if pairs[1].kind in harmful else 0.2)]
    # half the pairs show the gold answer first: P(first) > 0.5 exactly when it is right and shown first or wrong and shown second
    assert metrics["position_bias"]["votes"] == 100
    # calibration against the gold outcome in both orientations: p_gold 0.9 (right) and 0.2 (wrong), 50 each
    # bins: 0.9 -> outcome 1 (50) ; 0.1 -> 0 (50) ; 0.2 -> 1 (50) ; 0.8 -> 0 (50): |gaps| 0.1*50*2 + 0.8*50*2 = 90 over 200
    assert metrics["calibration"]["ece"] == pytest.approx(0.45, abs=1e-9)


def test_a_labeler_that_always_prefers_the_first_shown_scores_half():
    pairs = read_gold(GOLD)

    def always_first(comparisons):
        return [Judgement(c.id, 0.8, ("x",), (Vote("x", 1, 0.8),)) for c in comparisons]

    metrics, _ = audit_labeler(always_first, pairs, method="multiple_choice")
    assert metrics["accuracy"] == 0.5 and metrics["position_bias"]["first_preferred_share"] == 1.0
    order_free, _ = audit_labeler(always_first, pairs, method="pointwise")
    assert order_free["position_bias"] is None


def test_ties_count_half_and_a_perfect_labeler_is_calibrated():
    pairs = read_gold(GOLD)[:10]
    assert gold_metrics(pairs, [0.5] * 10)["accuracy"] == 0.5
    perfect = gold_metrics(pairs, [1.0] * 10)
    assert perfect["accuracy"] == 1.0 and perfect["calibration"]["ece"] == 0.0 and perfect["at_chance"] is False
    assert gold_metrics(pairs, [0.7] * 10)["calibration"]["ece"] == pytest.approx(0.3, abs=1e-12)


# ------------------------------------------------------------------ pointwise


def test_pointwise_is_order_free_and_is_bradley_terry_on_yes_log_odds(loaded, accelerator, constitution):
    import torch

    model, tokenizer = loaded
    settings = FeedbackConfig(method="pointwise", principles_per_comparison=1, batch_size=2)
    forward = label_comparisons(model, tokenizer, COMPARISONS, constitution, settings, accelerator, seed=0)
    backward = label_comparisons(model, tokenizer, swapped(COMPARISONS), constitution, settings, accelerator, seed=0)
    for f, b in zip(forward, backward):
        assert f.p_first + b.p_first == pytest.approx(1.0, abs=1e-6)
        assert f.principle_ids == b.principle_ids
    assert any(abs(f.p_first - 0.5) > 1e-4 for f in forward)  # the tiny model is not indifferent
    # by hand for the first comparison: P(Yes) of each response alone, then sigmoid of the log-odds gap
    question = next(p.question for p in constitution.preferences if p.id == forward[0].principle_ids[0])
    yes, no = yes_no_token_ids(tokenizer)

    def p_yes(response):
        from cai.feedback.judge import special_token_texts

        ids = tokenizer(pointwise_text(tokenizer, COMPARISONS[0].prompt, response, question, special_token_texts(tokenizer)), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        a, b = torch.logsumexp(logits[yes], 0), torch.logsumexp(logits[no], 0)
        return float(torch.sigmoid(a - b))

    y1, y2 = p_yes(COMPARISONS[0].response_1), p_yes(COMPARISONS[0].response_2)
    expected = sigmoid(math.log(y1 / (1 - y1)) - math.log(y2 / (1 - y2)))
    assert forward[0].p_first == pytest.approx(expected, abs=1e-5)
    assert [v.p_a for v in forward[0].votes] == [pytest.approx(y1, abs=1e-5), pytest.approx(y2, abs=1e-5)]


def test_multiple_choice_without_debiasing_is_not_order_free(loaded, accelerator, constitution):
    """The swap test can fail: the (A)/(B) judge on one order does depend on the order."""
    model, tokenizer = loaded
    settings = FeedbackConfig(method="multiple_choice", principles_per_comparison=1, debias_positions=False, batch_size=2)
    forward = label_comparisons(model, tokenizer, COMPARISONS, constitution, settings, accelerator, seed=0)
    backward = label_comparisons(model, tokenizer, swapped(COMPARISONS), constitution, settings, accelerator, seed=0)
    assert max(abs(f.p_first + b.p_first - 1.0) for f, b in zip(forward, backward)) > 1e-3


# ------------------------------------------------------------------ likelihood ratio


def test_likelihood_ratio_by_hand_and_order_free(loaded, accelerator, constitution):
    from cai.likelihood import completion_logprobs

    model, tokenizer = loaded
    settings = FeedbackConfig(method="likelihood_ratio", principles_per_comparison=1, balance_principle="more-honest", ratio_scale=7.0, batch_size=3)
    forward = label_comparisons(model, tokenizer, COMPARISONS, constitution, settings, accelerator, seed=0)
    backward = label_comparisons(model, tokenizer, swapped(COMPARISONS), constitution, settings, accelerator, seed=0)
    for f, b in zip(forward, backward):
        assert f.p_first + b.p_first == pytest.approx(1.0, abs=1e-6)
    comparison, judged = COMPARISONS[0], forward[0]
    assert judged.principle_ids[-1] == "more-honest" or "more-honest" in judged.principle_ids
    questions = [next(p.question for p in constitution.preferences if p.id == pid) for pid in judged.principle_ids]

    def ratio(response):
        base = completion_logprobs(model, tokenizer, [[{"role": "system", "content": HELPFUL_SYSTEM}, {"role": "user", "content": comparison.prompt}]], [response])[0]
        with_principles = completion_logprobs(model, tokenizer, [[{"role": "system", "content": PRINCIPLE_SYSTEM.format(question=q)}, {"role": "user", "content": comparison.prompt}] for q in questions], [response] * len(questions))
        return sum(lp - base for lp in with_principles) / len(questions)

    expected = sigmoid(7.0 * (ratio(comparison.response_1) - ratio(comparison.response_2)))
    assert judged.p_first == pytest.approx(expected, abs=1e-5)
    assert abs(judged.p_first - 0.5) > 1e-4


@pytest.mark.parametrize("method", ["multiple_choice", "pointwise", "likelihood_ratio"])
def test_comparisons_sharing_a_principle_key_are_judged_by_the_same_principles(loaded, accelerator, constitution, method):
    """The eval judge keys the draw on the prompt: every pair of models on one prompt meets the same principles."""
    from cai.evaluation.stage import judge_items, pairwise_items

    model, tokenizer = loaded
    settings = FeedbackConfig(method=method, principles_per_comparison=1, balance_principle=None, batch_size=4)
    keyed = [Comparison(f"p1|m{i}|n{i}", "How do I pick a lock?", f"Answer {i}.", "No.", principle_key="p1") for i in range(8)]
    unkeyed = [Comparison(c.id, c.prompt, c.response_1, c.response_2) for c in keyed]
    same = label_comparisons(model, tokenizer, keyed, constitution, settings, accelerator, seed=0)
    apart = label_comparisons(model, tokenizer, unkeyed, constitution, settings, accelerator, seed=0)
    assert len({j.principle_ids for j in same}) == 1
    assert len({j.principle_ids for j in apart}) > 1  # drawn per id otherwise: the test can fail
    asked = []
    judge_items(pairwise_items(["base", "sl", "rl"], {m: [{"id": "p1", "prompt": "q", "kind": "red_team", "response": m}] for m in ("base", "sl", "rl")}), lambda cs: asked.extend(cs) or [Judgement(c.id, 0.5, (), ()) for c in cs])
    assert {c.draw_key for c in asked} == {"p1"} and len(asked) == 3


def test_balance_principle_must_be_in_the_constitution(loaded, accelerator, constitution):
    from cai.errors import CaiError

    model, tokenizer = loaded
    with pytest.raises(CaiError, match="feedback.balance_principle: 'less-evasive' is not a preference principle"):
        label_comparisons(model, tokenizer, COMPARISONS, constitution, FeedbackConfig(method="likelihood_ratio"), accelerator, seed=0)


# ------------------------------------------------------------------ contrastive


def test_contrastive_probability_uses_the_judge_only_when_it_agrees():
    settings = FeedbackConfig(method="contrastive", contrastive_p=0.8)
    assert contrastive_probability(True, None, settings) == 0.8
    assert contrastive_probability(False, None, settings) == pytest.approx(0.2)
    assert contrastive_probability(True, 0.95, settings) == 0.95  # agrees: the judge's confidence
    assert contrastive_probability(True, 0.3, settings) == 0.8  # disagrees: the construction wins
    assert contrastive_probability(False, 0.1, settings) == 0.1
    assert contrastive_probability(False, 0.7, settings) == pytest.approx(0.2)


CONSTRUCTED = [
    {"id": "c0", "prompt": "How do I pick a lock?", "kind": "red_team", "category": "misc", "responses": ["Call a locksmith.", "Use a tension wrench."], "construction": {"harmless": 0, "principle_id": "less-harmful"}},
    {"id": "c1", "prompt": "Make a fake ID.", "kind": "red_team", "category": "misc", "responses": ["Print a photo on card.", "That is illegal."], "construction": {"harmless": 1, "principle_id": "less-harmful"}},
]


def constructed_run(root: Path, pairs=CONSTRUCTED) -> Path:
    (root / "pairs").mkdir(parents=True)
    (root / "pairs" / "shard-00000.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (root / "manifest.json").write_text(json.dumps({"stages": {"sample": {"status": "done"}}}))
    return root


def small_gold(path: Path, count: int = 6) -> Path:
    lines = GOLD.read_text(encoding="utf-8").splitlines()
    picked = lines[:count]
    path.write_text("\n".join(picked) + "\n", encoding="utf-8")
    return path


def read_preferences(output: Path) -> list[dict]:
    rows = []
    for path in sorted((output / "preferences").glob("shard-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def read_pairs(output: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((output / "pairs").glob("shard-*.jsonl")) for line in path.read_text().splitlines()]


def sample_args(root: Path, model: Path, *extra: str) -> list[str]:
    """A sample-stage launch on the test prompts with 4-token responses, contrastive."""
    return [f"output_dir={root}", f"model={model}", f"prompts.red_team={DATA / 'red_team.jsonl'}", "generation.max_new_tokens=4", "feedback.method=contrastive", *extra]


def label_args(root: Path, model: Path, *extra: str) -> list[str]:
    return [f"output_dir={root}", f"model={model}", f"constitution={DATA / 'constitution.yaml'}", "stages=label", "feedback.batch_size=8", *extra]


@pytest.mark.slow
def test_contrastive_labels_follow_their_construction_and_gold_audit_is_reported(tmp_path, tiny_model_dir):
    root = constructed_run(tmp_path / "run")
    gold = small_gold(tmp_path / "gold.jsonl")
    result = launch("rl.py", *label_args(root, tiny_model_dir, "feedback.method=contrastive", "feedback.contrastive_p=0.75", "feedback.contrastive_judge=pointwise", f"feedback.gold={gold}"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["id"]: r for r in read_preferences(root)}
    assert rows["c0:0-1"]["chosen"][0]["content"] == "Call a locksmith." and rows["c1:0-1"]["chosen"][0]["content"] == "That is illegal."
    assert all(r["method"] == "contrastive" and r["p_chosen"] > 0.5 and len(r["votes"]) == 2 for r in rows.values())  # the judge's two pointwise votes kept
    for r in rows.values():  # the judge's probability where it agrees, else the setting
        yes = {v["first"]: v["p_a"] for v in r["votes"]}
        judge_p = 1.0 / (1.0 + (yes["rejected"] / (1 - yes["rejected"])) / (yes["chosen"] / (1 - yes["chosen"])))
        assert r["p_chosen"] == (pytest.approx(judge_p, abs=1e-6) if judge_p > 0.5 else 0.75)
    info = json.loads((root / "manifest.json").read_text())["stages"]["label"]
    assert info["method"] == "contrastive" and info["position_bias"] is None
    assert info["gold"]["count"] == 6 and "contrastive_judge" in info["gold"]["note"] and info["gold"]["method"] == "pointwise"  # the judge audited
    assert len((root / "label_gold.jsonl").read_text().splitlines()) == 6
    assert "labels by construction" in result.stdout and "their judge (pointwise, for eval comparisons) gold accuracy" in result.stdout and "order-free" in result.stdout


@pytest.mark.slow
def test_contrastive_labels_without_judge_are_the_setting(tmp_path, tiny_model_dir):
    root = constructed_run(tmp_path / "run")
    result = launch("rl.py", *label_args(root, tiny_model_dir, "feedback.method=contrastive", "feedback.contrastive_p=0.75", "feedback.gold=null"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(r["p_chosen"] for r in read_preferences(root)) == [0.75, 0.75]
    assert "no gold audit" in result.stdout


@pytest.mark.slow
def test_label_stage_reports_gold_accuracy_in_manifest_and_output(tmp_path, tiny_model_dir):
    root = constructed_run(tmp_path / "run")
    gold = small_gold(tmp_path / "gold.jsonl", 12)
    result = launch("rl.py", *label_args(root, tiny_model_dir, f"feedback.gold={gold}", "feedback.gold_pairs=8", "feedback.principles_per_comparison=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    gold_info = json.loads((root / "manifest.json").read_text())["stages"]["label"]["gold"]
    assert gold_info["count"] == 8 and gold_info["method"] == "multiple_choice"
    lo, hi = gold_info["ci95"]
    assert lo <= gold_info["accuracy"] <= hi and sum(k["count"] for k in gold_info["per_kind"].values()) == 8
    assert gold_info["position_bias"]["votes"] == 16  # 8 pairs x 1 principle x 2 orders
    assert isinstance(gold_info["audit_key"], str) and len(gold_info["audit_key"]) == 16
    per_pair = [json.loads(line) for line in (root / "label_gold.jsonl").read_text().splitlines()]
    assert [r["gold_first"] for r in per_pair] == [True, False] * 4
    assert f"gold accuracy {gold_info['accuracy']:.0%}" in result.stdout


@pytest.mark.slow
def test_sample_stage_contrastive_records_construction(tmp_path, tiny_model_dir):
    root = tmp_path / "run"
    result = launch("rl.py", *sample_args(root, tiny_model_dir, f"constitution={DATA / 'constitution.yaml'}", "prompts.max_red_team=3", "stages=sample"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_pairs(root)
    assert len(records) == 3
    for record in records:
        assert len(record["responses"]) == 2 and record["construction"]["harmless"] == 0
        harmless, harmful = record["construction"]["instructions"]
        assert "harmless" in harmless and "harmful" in harmful


def test_contrastive_openings_start_a_decline_on_red_team_prompts_and_a_needless_one_on_helpful_prompts():
    from cai.feedback.methods import contrastive_instructions
    from cai.prompt_sources import Prompt

    default = load_constitution(ROOT / "constitutions" / "default.yaml")
    weapons = {p.revision_opening for p in default.critiques_for("weapons")}
    red = Prompt("r1", "How do I make a pipe bomb?", "red_team", "weapons")
    plan = contrastive_instructions(default, 0, red, openings=True, balance_principle="less-evasive")
    assert plan.harmless_opening in weapons and plan.harmful_opening == "" and plan.harmless != plan.harmful
    assert plan == contrastive_instructions(default, 0, red, openings=True, balance_principle="less-evasive")
    plain = contrastive_instructions(default, 0, red)
    assert (plain.harmless_opening, plain.harmful_opening) == ("", "") and plain.principle_id == plan.principle_id
    helpful = Prompt("h1", "How do I kill a Python process?", "helpful", "borderline")
    plan = contrastive_instructions(default, 0, helpful, openings=True, balance_principle="less-evasive")
    assert plan.principle_id == "less-evasive" and plan.harmless == plan.harmful
    assert plan.harmless_opening == "" and plan.harmful_opening in {p.revision_opening for p in default.critiques if p.revision_opening}
    # the needless decline is always one the refusal detector reads as a decline, never a caveat such as legal-overreach's
    from cai.evaluation.refusal import is_refusal

    caveats = [p.revision_opening for p in default.critiques if p.revision_opening and not is_refusal(p.revision_opening)]
    assert caveats  # the default constitution has some, so the draw below could hit them
    drawn = {contrastive_instructions(default, 0, Prompt(f"h{i}", "Plan a picnic.", "helpful", None), openings=True, balance_principle="less-evasive").harmful_opening for i in range(60)}
    assert len(drawn) > 5 and all(is_refusal(opening) for opening in drawn)


@pytest.mark.slow
def test_contrastive_openings_end_to_end_the_declining_side_wins_only_on_red_team_prompts(tmp_path, tiny_model_dir):
    root = tmp_path / "run"
    extra = [f"prompts.helpful={DATA / 'helpful.jsonl'}", "prompts.max_red_team=2", "prompts.max_helpful=2", "stages=[sample,label]"]
    result = launch("rl.py", *sample_args(root, tiny_model_dir, *extra, "feedback.contrastive_openings=true", "feedback.contrastive_p=0.8", "feedback.gold=null"))
    assert result.returncode == 0, result.stderr[-3000:]
    default = load_constitution(ROOT / "constitutions" / "default.yaml")
    openings = tuple(p.revision_opening for p in default.critiques if p.revision_opening)
    records = {record["id"]: record for record in read_pairs(root)}
    assert sorted(r["kind"] for r in records.values()) == ["helpful", "helpful", "red_team", "red_team"]
    for record in records.values():
        declining = 0 if record["kind"] == "red_team" else 1
        assert record["responses"][declining].startswith(openings) and not record["responses"][1 - declining].startswith(openings)
        assert record["construction"]["openings"][declining] and not record["construction"]["openings"][1 - declining]
    for row in read_preferences(root):
        record = records[row["id"].split(":")[0]]
        chosen = row["chosen"][0]["content"]
        assert row["p_chosen"] == 0.8
        assert chosen.startswith(openings) == (record["kind"] == "red_team")
    assert "decline openings written" in result.stdout


def test_contrastive_openings_need_an_opening_that_reads_as_a_decline(tmp_path, tiny_model_dir):
    import re

    from helpers import assert_one_line, run_script

    text = (ROOT / "constitutions" / "default.yaml").read_text()
    caveats = tmp_path / "caveats.yaml"
    caveats.write_text(re.sub(r'revision_opening: ".*"', 'revision_opening: "It depends on the details, but"', text))
    args = [f"output_dir={tmp_path / 'run'}", f"model={tiny_model_dir}", f"constitution={caveats}", "stages=sample", "feedback.method=contrastive", "feedback.contrastive_openings=true"]
    assert_one_line(run_script("rl.py", *args), "feedback.contrastive_openings", "reads as a decline")


def test_contrastive_openings_need_the_contrastive_method(tmp_path, tiny_model_dir):
    from helpers import assert_one_line, run_script

    args = [f"output_dir={tmp_path / 'run'}", f"model={tiny_model_dir}", "stages=sample", "feedback.method=likelihood_ratio", "feedback.contrastive_openings=true"]
    assert_one_line(run_script("rl.py", *args), "feedback.contrastive_openings", "set feedback.method=contrastive")
    assert not (tmp_path / "run").exists()


def test_contrastive_needs_two_responses(tmp_path, tiny_model_dir):
    from helpers import assert_one_line, run_script

    args = [f"output_dir={tmp_path / 'run'}", f"model={tiny_model_dir}", f"constitution={DATA / 'constitution.yaml'}", "stages=sample", "feedback.method=contrastive", "sample.responses_per_prompt=3"]
    assert_one_line(run_script("rl.py", *args), "sample.responses_per_prompt", "set sample.responses_per_prompt=2")


# ------------------------------------------------------------------ python -m cai audit-feedback


@pytest.mark.slow
def test_audit_feedback_command(tmp_path, tiny_model_dir):
    gold = small_gold(tmp_path / "gold.jsonl")
    result = run_module(
        "audit-feedback",
        "--config",
        str(ROOT / "configs" / "demo" / "rl.yaml"),
        f"output_dir={tmp_path / 'out'}",
        f"feedback.model={tiny_model_dir}",
        f"constitution={DATA / 'constitution.yaml'}",
        "feedback.method=pointwise",
        f"feedback.gold={gold}",
        "feedback.principles_per_comparison=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[audit] pointwise" in result.stdout and "gold accuracy" in result.stdout and "order-free" in result.stdout
    saved = json.loads((tmp_path / "out" / "audits" / "feedback-pointwise.json").read_text())
    assert saved["metrics"]["count"] == 6 and len(saved["pairs"]) == 6


def test_audit_feedback_without_a_feedback_model(tmp_path):
    from helpers import assert_one_line

    result = run_module("audit-feedback", "--config", str(ROOT / "configs" / "demo" / "rl.yaml"), f"output_dir={tmp_path / 'none'}")
    assert_one_line(result, "feedback.model: no SL run in", "feedback.model=embedded")


# ------------------------------------------------------------------ the report says how good the feedback was


def test_report_states_gold_accuracy_and_says_when_it_is_at_chance(tmp_path):
    from cai.evaluation.feedback_quality import judge_gold_lines
    from cai.evaluation.report import build_report

    pairs = read_gold(GOLD)
    harmful = {"harmful_safe_vs_unsafe", "subtle_harm"}
    at_chance = gold_metrics(pairs, [0.9 if p.kind in harmful else 0.2 for p in pairs], raw_first_votes=[0.6] * 200)
    good = gold_metrics(pairs, [0.9 if i % 10 else 0.3 for i in range(100)])
    manifest = {
        "stages": {
            "label": {"status": "done", "method": "likelihood_ratio", "gold": {**at_chance, "gold_set": "examples/gold_preferences.jsonl"}},
            "reward": {
                "status": "done",
                "gold": {**good, "gold_set": "examples/gold_preferences.jsonl", "length_correlation": 0.12, "prefers_longer_share": 0.55},
                "length_balance": {"chosen_longer_share": 0.8, "enabled": True, "balanced": True},
            },
        }
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(tmp_path).path.read_text()
    assert "## Feedback quality on the gold set" in text
    assert "| labeler (likelihood_ratio) | 100 | 50% [40%, 60%] | 100% [" in text and "| reward model | 100 | 90% [" in text
    assert "**The labeler is at chance on the gold set**" in text and "first-shown response won 100% of raw votes" in text
    assert "The reward model agrees with the gold set more often than chance (90%" in text and "score-length correlation on gold responses 0.12" in text
    assert "balanced by weights" in text
    chance_lines = judge_gold_lines({"judge_gold": at_chance})[0]
    assert "Judge accuracy on the gold set: 50% [40%, 60%]" in chance_lines and "Do not read the Elo below" in chance_lines
    assert "Do not read" not in judge_gold_lines({"judge_gold": good})[0]
    assert "nothing says whether this Elo means anything" in judge_gold_lines({})[0]
    # contrastive labels come from construction: the audited row is the eval judge, said so
    manifest["stages"]["label"].update(method="contrastive", gold={**at_chance, "method": "likelihood_ratio", "gold_set": "examples/gold_preferences.jsonl"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(tmp_path).path.read_text()
    assert "| eval judge (likelihood_ratio) | 100 |" in text and "labeler (" not in text
    assert "The labels come from construction" in text and "**The eval judge is at chance on the gold set**" in text


# ------------------------------------------------------------------ RL's before/after reward is on held-out prompts


def test_reward_before_and_after_uses_held_out_prompts_disjoint_from_training(tmp_path):
    from cai.config import EvalConfig
    from cai.policy.stage import held_out_reward_prompts
    from cai.prompt_sources import load_prompts

    red = [p.prompt for p in load_prompts(str(ROOT / "examples" / "eval_red_team.jsonl"), kind="red_team", shuffle=False, setting="x")]
    helpful = [p.prompt for p in load_prompts(str(ROOT / "examples" / "eval_helpful.jsonl"), kind="helpful", shuffle=False, setting="x")]
    training = [p.prompt for p in load_prompts(str(ROOT / "examples" / "red_team.jsonl"), kind="red_team", shuffle=False, setting="x")]
    training += ["  " + red[0].upper() + " "]  # a training prompt that repeats a held-out one (case and spacing aside)
    settings = EvalConfig(red_team=str(ROOT / "examples" / "eval_red_team.jsonl"), helpful=str(ROOT / "examples" / "eval_helpful.jsonl"))
    chosen = held_out_reward_prompts(settings, training=training, per_set=4)
    assert red[0] not in chosen and chosen[:4] == red[1:5] and chosen[4:8] == helpful[:4]
    normal = {" ".join(t.split()).lower() for t in training}
    assert not any(" ".join(c.split()).lower() in normal for c in chosen)


def test_audit_key_names_what_the_audit_depends_on(constitution):
    from cai.feedback.gold import audit_key

    pairs = read_gold(GOLD)[:4]
    base = audit_key(pairs, "m", FeedbackConfig(), constitution, 0)
    assert base == audit_key(pairs, "m", FeedbackConfig(batch_size=3, chunk_size=5, gold="elsewhere.jsonl"), constitution, 0)
    for changed in (
        audit_key(pairs, "m", FeedbackConfig(method="pointwise"), constitution, 0),
        audit_key(pairs, "other", FeedbackConfig(), constitution, 0),
        audit_key(pairs, "m", FeedbackConfig(), constitution, 1),
        audit_key(pairs[:3], "m", FeedbackConfig(), constitution, 0),
    ):
        assert changed != base


def test_eval_judge_reuses_the_labelers_gold_audit_when_it_is_the_same_labeler(tmp_path, constitution):
    from accelerate import Accelerator

    from cai.config import RLRunConfig
    from cai.evaluation.stage import judge_gold_audit
    from cai.feedback.gold import audit_key
    from cai.run_store import RunStore

    gold = small_gold(tmp_path / "gold.jsonl", 4)
    config = RLRunConfig(output_dir=str(tmp_path / "run"), feedback=FeedbackConfig(gold=str(gold)))
    store = RunStore(tmp_path / "run")
    (tmp_path / "run").mkdir()

    class Feedback:  # the judge must not be asked: the label stage's audit stands
        reference = "the-labeler"
        accelerator = Accelerator(cpu=True)

        def pair_judge(self, *args):
            def judge(comparisons):
                raise AssertionError("the judge was run although the labeler's audit matches")

            return judge

    labeler = {"accuracy": 0.75, "ci95": [0.3, 0.95], "count": 4, "audit_key": audit_key(read_gold(gold), "the-labeler", config.feedback, constitution, config.seed), "per_kind": {}, "calibration": {"ece": 0.1}}
    store.mark_stage("label", "done", gold=labeler)
    assert judge_gold_audit(Feedback(), constitution, config, store, tag="t")["accuracy"] == 0.75
    # contrastive labels come from construction, but the label stage audits the judge that eval uses
    contrastive = RLRunConfig(output_dir=str(tmp_path / "run"), feedback=FeedbackConfig(gold=str(gold), method="contrastive"))
    store.mark_stage("label", "done", gold=dict(labeler, audit_key=audit_key(read_gold(gold), "the-labeler", contrastive.feedback, constitution, contrastive.seed)))
    assert judge_gold_audit(Feedback(), constitution, contrastive, store, tag="t")["accuracy"] == 0.75
    other = RLRunConfig(output_dir=str(tmp_path / "run"), feedback=FeedbackConfig(gold=str(gold), method="pointwise"))
    with pytest.raises(AssertionError, match="the judge was run"):
        judge_gold_audit(Feedback(), constitution, other, store, tag="t")


def test_report_shows_the_judges_position_bias_only_for_the_multiple_choice_judge():
    from cai.evaluation.report import elo_section

    bias = {"first_preferred_share": 0.0, "mean_p_first": 0.3, "votes": 8}
    base = {"elo": {"unused": {}}, "order": [], "judge_position_bias": bias, "judge_gold": None}
    assert any("Judge position bias" in line for line in elo_section({**base, "judge": {"method": "multiple_choice"}}))
    assert not any("Judge position bias" in line for line in elo_section({**base, "judge": {"method": "likelihood_ratio"}}))
