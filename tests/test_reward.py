"""The `reward` stage: soft-label loss inside trl's RewardTrainer, scoring position, round trip, errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, ROOT, launch
from helpers import assert_one_line, run_script

from cai.errors import CaiError
from cai.reward.model import (
    PreferencePair,
    build_reward_trainer,
    check_same_tokenizer,
    held_out_metrics,
    orient,
    read_helpful_preferences,
    score_ids,
    split_held_out,
    tokenize_comparisons,
)

EXAMPLES = ROOT / "examples" / "helpful_preferences.jsonl"


# ---------------------------------------------------------------- hand-made preferences


def preference_records(count: int = 24) -> list[dict]:
    """Label-stage records where the preferred response always says "kindly", the other "stone".

    Every third record is written the other way round with p < 0.5, as a labeler may emit it.
    """
    records = []
    for i in range(count):
        good = "Sure, " + " ".join(["kindly"] * (3 + i % 4))
        bad = "Well, " + " ".join(["stone"] * (3 + (i + 2) % 4))
        p = 0.6 + 0.3 * (i % 4) / 3
        if i % 3 == 2:
            good, bad, p = bad, good, 1.0 - p
        records.append(
            {
                "id": f"pair-{i}",
                "prompt": [{"role": "user", "content": f"Question number {i} about topic {i * 7}?"}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
                "p_chosen": p,
                "principle_ids": ["less-harmful"],
                "votes": 1,
            }
        )
    return records


def comparisons(records: list[dict]) -> list[PreferencePair]:
    from cai.reward.model import comparison_from_record

    return [orient(comparison_from_record(r, where=r["id"], source="ai")) for r in records]


def prepare_run(root: Path, sl_model: Path | None, records: list[dict]) -> Path:
    """A run directory as the label stage leaves it: sl_model/, preferences/ shards, label done."""
    from cai.run_store import RunStore

    store = RunStore(root)
    root.mkdir(parents=True, exist_ok=True)
    if sl_model is not None:
        shutil.copytree(sl_model, root / "sl_model")
    store.write_shard("preferences", 0, records)
    store.mark_stage("label", "done", comparisons=len(records))
    return root


def tiny_tokenizer(model_dir: Path):
    from cai import models

    return models.load_tokenizer(models.resolve(str(model_dir)), padding_side="right")


def reward_model(model_dir: Path, tokenizer, seed: int = 0):
    import torch
    from transformers import set_seed

    from cai import models
    from cai.reward.model import load_reward_base

    set_seed(seed)
    model = load_reward_base(models.resolve(str(model_dir)), dtype=torch.float32, setting="model")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def reward_args(output: Path, **changes):
    from trl import RewardConfig

    from cai.config import TrainingConfig
    from cai.training import trainer_config

    settings = TrainingConfig(learning_rate=3e-3, max_steps=6, per_device_train_batch_size=8, logging_steps=2, save_steps=100, lr_scheduler_type="constant", max_length=256)
    return trainer_config(RewardConfig, settings, section="reward.training", output_dir=output, seed=0, disable_tqdm=True, **changes)


# ---------------------------------------------------------------- pure parts


def test_held_out_metrics_by_hand():
    # d = r_c - r_r = ln 3, 0, -ln 3 -> predicted p = 0.75, 0.5, 0.25; labels 0.9, 0.5 (tie), 0.7
    chosen, rejected = [math.log(3.0), 1.0, 0.0], [0.0, 1.0, math.log(3.0)]
    result = held_out_metrics(chosen, rejected, [0.9, 0.5, 0.7], [2, 4, 6], [3, 5, 7], bins=2)
    assert result["comparisons"] == 3 and result["ties"] == 1
    # decided: (0.75, won) and (0.25, won) -> accuracy 1/2
    assert result["accuracy"] == pytest.approx(0.5, abs=1e-12)
    # against the winner, both orders: p = 0.75, 0.25 (y = 1) and 0.25, 0.75 (y = 0); bins=2:
    # lower bin {0.25 y=1, 0.25 y=0}: |1 - 0.5| = 0.5; upper {0.75 y=1, 0.75 y=0}: |1 - 1.5| = 0.5 -> ECE 1/4
    assert result["ece_vs_winner"] == pytest.approx(0.25, abs=1e-9)
    # against the soft targets, both orders: p (0.75, 0.5, 0.25, 0.25, 0.5, 0.75), t (0.9, 0.5, 0.7, 0.1, 0.5, 0.3)
    # lower bin {0.25: 0.7, 0.25: 0.1}: |0.8 - 0.5| = 0.3; upper {0.75: 0.9, 0.5: 0.5, 0.5: 0.5, 0.75: 0.3}: |2.2 - 2.5| = 0.3 -> 0.6 / 6
    assert result["ece"] == pytest.approx(0.1, abs=1e-9)
    # Brier vs the soft targets: 2 * (0.15^2 + 0 + 0.45^2) / 6 = 0.075
    assert result["brier"] == pytest.approx(0.075, abs=1e-9)
    # |0.75 - 0.9| + |0.5 - 0.5| + |0.25 - 0.7| = 0.6 -> 0.2
    assert result["label_mae"] == pytest.approx(0.2, abs=1e-9)
    # scores (ln3, 1, 0, 0, 1, ln3) vs lengths (2, 4, 6, 3, 5, 7)
    scores, lengths = np.array(chosen + rejected), np.array([2, 4, 6, 3, 5, 7.0])
    assert result["length_correlation"] == pytest.approx(np.corrcoef(scores, lengths)[0, 1], abs=1e-12)
    assert held_out_metrics([1.0], [0.0], [0.8], [3], [3])["length_correlation"] is None  # lengths constant


def test_a_perfect_soft_fit_is_calibrated():
    """Scores that reproduce the soft targets exactly: ECE 0 against them, 0.4 against the winner."""
    d = math.log(0.6 / 0.4)
    result = held_out_metrics([d] * 5, [0.0] * 5, [0.6] * 5, [3] * 5, [4] * 5)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12) and result["brier"] == pytest.approx(0.0, abs=1e-12)
    # vs the winner: p 0.6 (won) and 0.4 (lost) in separate bins: (0.4 + 0.4) / 2
    assert result["ece_vs_winner"] == pytest.approx(0.4, abs=1e-9)


def test_length_balance_weights_by_hand():
    from cai.reward.model import length_balance_weights

    weights, stats = length_balance_weights([10, 10, 10, 2, 6], [5, 5, 5, 8, 6])
    # 3 chosen-longer, 1 chosen-shorter, 1 equal: 4 / (2 * 3) = 2/3 and 4 / (2 * 1) = 2; equal length keeps 1
    assert weights == [pytest.approx(2 / 3)] * 3 + [pytest.approx(2.0), 1.0]
    assert stats["chosen_longer_share"] == 0.75 and stats["balanced"] is True
    assert sum(weights[:3]) == pytest.approx(sum(weights[3:4]))
    unbalanced, info = length_balance_weights([10, 10], [5, 5])
    assert unbalanced == [1.0, 1.0] and info["balanced"] is False


def test_weighted_soft_loss_by_hand():
    import torch

    from cai.feedback.preference_math import soft_preference_loss

    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    per_pair = [-math.log(1 / (1 + math.exp(-1.0))), math.log(2.0)]
    weighted = soft_preference_loss(chosen, rejected, torch.ones(2), weights=torch.tensor([3.0, 1.0]))
    assert float(weighted) == pytest.approx((3 * per_pair[0] + per_pair[1]) / 4, abs=1e-6)


@pytest.mark.slow
def test_length_balance_lowers_the_score_length_correlation(tiny_model_dir, tmp_path):
    """A planted set: the chosen response is the longer one in 14 of 16 pairs, and nothing but length differs.

    Unweighted, the reward model learns "longer is better"; with the balance weights the two
    groups pull equally and the length preference cancels. Scored on new prompts.
    """
    from datasets import Dataset

    from cai.reward.model import length_balance_weights, pearson, score_responses

    tokenizer = tiny_tokenizer(tiny_model_dir)
    long, short = " ".join(["fine"] * 12), " ".join(["fine"] * 3)
    items = [PreferencePair(f"c{i}", "Question?", *((long, short) if i % 8 else (short, long)), 1.0, "ai") for i in range(16)]
    weights, stats = length_balance_weights([len(c.chosen.split()) for c in items], [len(c.rejected.split()) for c in items])
    assert stats["chosen_longer_share"] == 14 / 16
    probe = [(f"Another question {i}?", text, n) for i in range(8) for text, n in ((short, 3), (long, 12))]
    correlations, gaps = {}, {}
    for name, w in (("plain", None), ("balanced", weights)):
        rows, _ = tokenize_comparisons(tokenizer, items, max_length=128, soft_labels=True, weights=w)
        args = reward_args(tmp_path / name, max_steps=20, per_device_train_batch_size=16, learning_rate=1e-3)
        trainer = build_reward_trainer(reward_model(tiny_model_dir, tokenizer), args, Dataset.from_list(rows), tokenizer, soft_labels=True, weighted=w is not None)
        trainer.train()
        scores = score_responses(trainer.model, tokenizer, [p for p, _, _ in probe], [r for _, r, _ in probe])
        correlations[name] = pearson(scores, [n for _, _, n in probe])
        gaps[name] = float(np.mean(scores[1::2]) - np.mean(scores[0::2]))  # mean score of 12 words minus 3 words
    # unweighted it learns length: sigmoid(gap) heads for 14/16 (gap 1.95); the prompts barely move the score, so r is near 1
    assert correlations["plain"] > 0.9 and gaps["plain"] > 1.0, (correlations, gaps)
    # balanced, the length gap all but vanishes (r is scale-free, so it is read with the gap beside it)
    assert abs(gaps["balanced"]) < 0.1 * gaps["plain"] and correlations["balanced"] < correlations["plain"], (correlations, gaps)


def test_length_slope_by_hand():
    from cai.reward.model import fit_length_slope

    assert fit_length_slope([1.0, 2.0, 3.0], [10, 20, 30]) == pytest.approx(0.1)
    assert fit_length_slope([0.0, 1.0, 0.0, 1.0], [1, 1, 3, 3]) == pytest.approx(0.0)
    assert fit_length_slope([1.0, 2.0], [5, 5]) is None


def test_length_correction_removes_the_length_a_reward_model_learned(tiny_model_dir, tmp_path):
    """The planted set of the test above, trained without weights: the reward model learns "longer is
    better". The correction, fitted on the training responses, is kept in the model's config and taken
    off every score: on new prompts the 12-word and 3-word answers then score about alike, and a
    corrected model refuses to score ids whose response length it is not told."""
    from accelerate import Accelerator
    from datasets import Dataset

    from cai.reward.model import LENGTH_SLOPE, pearson, score_ids, score_responses
    from cai.reward.stage import correct_length

    tokenizer = tiny_tokenizer(tiny_model_dir)
    long, short = " ".join(["fine"] * 12), " ".join(["fine"] * 3)
    items = [PreferencePair(f"c{i}", "Question?", *((long, short) if i % 8 else (short, long)), 1.0, "ai") for i in range(16)]
    probe = [(f"Another question {i}?", text, n) for i in range(8) for text, n in ((short, 3), (long, 12))]
    rows, _ = tokenize_comparisons(tokenizer, items, max_length=128, soft_labels=True)
    trainer = build_reward_trainer(reward_model(tiny_model_dir, tokenizer), reward_args(tmp_path / "plain", max_steps=20, per_device_train_batch_size=16, learning_rate=1e-3), Dataset.from_list(rows), tokenizer, soft_labels=True)
    trainer.train()
    model = trainer.model
    raw = score_responses(model, tokenizer, [p for p, _, _ in probe], [r for _, r, _ in probe])
    raw_gap = float(np.mean(raw[1::2]) - np.mean(raw[0::2]))
    assert raw_gap > 1.0 and pearson(raw, [n for _, _, n in probe]) > 0.9

    info = correct_length(model, tokenizer, items, enabled=True, max_length=128, batch_size=8, accelerator=Accelerator(cpu=True))
    assert info["enabled"] and info["slope_per_token"] > 0 and getattr(model.config, LENGTH_SLOPE) == info["slope_per_token"]
    after = info["train_length_correlation_after"]  # two distinct responses: the corrected scores are constant (r undefined) or near it
    assert info["train_length_correlation_before"] > 0.9 and (after is None or abs(after) < 0.05)
    corrected = score_responses(model, tokenizer, [p for p, _, _ in probe], [r for _, r, _ in probe])
    for before, after, (_, text, _) in zip(raw, corrected, probe):
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the end of turn
        assert after == pytest.approx(before - info["slope_per_token"] * length, abs=1e-4)
    assert abs(float(np.mean(corrected[1::2]) - np.mean(corrected[0::2]))) < 0.2 * raw_gap
    with pytest.raises(ValueError, match="response_lengths"):
        score_ids(model, [[1, 2, 3]], pad_token_id=tokenizer.pad_token_id)
    assert correct_length(model, tokenizer, items, enabled=False, max_length=128, batch_size=8, accelerator=Accelerator(cpu=True)) == {"enabled": False}
    assert getattr(model.config, LENGTH_SLOPE) == 0.0  # switched off, a refit model scores raw


def test_orient_and_seeded_split_by_prompt():
    flipped = orient(PreferencePair("x", "q", "a", "b", 0.2, "ai"))
    assert (flipped.chosen, flipped.rejected, flipped.p_chosen) == ("b", "a", pytest.approx(0.8))
    items = [PreferencePair(f"c{i}", f"prompt {i // 2}", "a", "b", 0.9, "ai") for i in range(40)]
    train, held = split_held_out(items, 0.25, seed=3)
    assert len(held) == 10 and len(train) == 30
    assert not {c.prompt for c in train} & {c.prompt for c in held}
    assert split_held_out(items, 0.25, seed=3) == (train, held)
    assert split_held_out(items, 0.25, seed=4)[1] != held
    assert split_held_out(items, 0.0, seed=3) == (items, [])
    assert len(split_held_out(items[:2], 0.5, seed=0)[0]) == 2  # one prompt: nothing can be held out


def test_helpful_preferences_plain_and_conversational(tmp_path):
    shipped = read_helpful_preferences(EXAMPLES)
    assert len(shipped) == 40 and {c.p_chosen for c in shipped} == {1.0} and {c.source for c in shipped} == {"helpful"}
    path = tmp_path / "reward_mixed.jsonl"
    path.write_text(
        json.dumps({"id": "a", "prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})
        + "\n\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "No."}]})
        + "\n"
    )
    first, second = read_helpful_preferences(path)
    assert (first.prompt, first.chosen, first.rejected) == ("Hi?", "Hello!", "Go away.")
    assert (second.id, second.prompt, second.chosen, second.p_chosen) == ("reward_mixed-3", "Hi?", "Hello!", 1.0)
    path.write_text(json.dumps({"prompt": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(CaiError, match=r"reward_mixed.jsonl:1: column 'prompt' must be a string or a single 'user' message"):
        read_helpful_preferences(path)


def test_tokenizer_mismatch_is_named(tiny_model_dir):
    policy = tiny_tokenizer(tiny_model_dir)
    other = tiny_tokenizer(tiny_model_dir)
    check_same_tokenizer(policy, other, policy_name="sl", reward_name="rm")
    other.add_special_tokens({"additional_special_tokens": ["<|reward|>"]})
    with pytest.raises(CaiError, match=r"reward.model: rm has a different tokenizer from the policy sl \(vocabulary sizes 49152 vs 49153, e.g. '<\|reward\|>'\)"):
        check_same_tokenizer(policy, other, policy_name="sl", reward_name="rm")


def test_lora_adapter_sl_model_becomes_a_reward_base(tiny_model_dir, tmp_path):
    """An SL run with lora.merge=false leaves an adapter; the reward base is its merged weights + a head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cai import models
    from cai.reward.model import load_reward_base

    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    model = load_reward_base(models.resolve(str(tmp_path / "adapter")), dtype=torch.float32, setting="model")
    merged = adapter.merge_and_unload().state_dict()
    weights = model.state_dict()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert set(weights) - set(merged) == {"score.weight"}
    assert all(torch.equal(weights[k], merged[k]) for k in weights if k != "score.weight")


# ---------------------------------------------------------------- inside trl's RewardTrainer


def test_soft_loss_is_trl_loss_at_p1_and_p_reaches_the_loss(tiny_model_dir, tmp_path):
    import torch
    from datasets import Dataset

    from cai.feedback.preference_math import soft_preference_loss

    tokenizer = tiny_tokenizer(tiny_model_dir)
    items = comparisons(preference_records(8))
    rows, _ = tokenize_comparisons(tokenizer, items, max_length=256, soft_labels=True)
    model = reward_model(tiny_model_dir, tokenizer)
    soft = build_reward_trainer(model, reward_args(tmp_path / "soft", per_device_train_batch_size=8), Dataset.from_list(rows), tokenizer, soft_labels=True)
    hard_rows = [{k: v for k, v in r.items() if k != "p_chosen"} for r in rows]
    hard = build_reward_trainer(model, reward_args(tmp_path / "hard", per_device_train_batch_size=8), Dataset.from_list(hard_rows), tokenizer, soft_labels=False)
    assert type(hard).__name__ == "RewardTrainer"

    # p survives trl's column pruning and collation, in the batch's row order
    batch = next(iter(soft.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "p_chosen"}
    by_ids = {tuple(r["chosen_ids"]): r["p_chosen"] for r in rows}
    for row, mask, p in zip(batch["input_ids"][:8], batch["attention_mask"][:8], batch["p_chosen"]):
        assert by_ids[tuple(row[mask.bool()].tolist())] == pytest.approx(float(p))
    assert sorted(batch["p_chosen"].tolist()) == pytest.approx(sorted(r["p_chosen"] for r in rows))

    model.eval()
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        chosen, rejected = scores[:8], scores[8:]
        soft_loss = soft.compute_loss(model, dict(batch))
        expected = soft_preference_loss(chosen, rejected, batch["p_chosen"])
        assert float(soft_loss) == pytest.approx(float(expected), abs=1e-6)
        certain = {**batch, "p_chosen": torch.ones(8)}
        trl_loss = hard.compute_loss(model, {k: v for k, v in batch.items() if k != "p_chosen"})
        assert float(soft.compute_loss(model, dict(certain))) == pytest.approx(float(trl_loss), abs=1e-6)
        assert float(trl_loss) == pytest.approx(float(-torch.nn.functional.logsigmoid(chosen - rejected).mean()), abs=1e-6)
        # the soft labels matter: with random scores, p = 1 and the real p give different losses
        assert abs(float(soft_loss) - float(trl_loss)) > 1e-4


def held_out_accuracy(model, tokenizer, held) -> float:
    """Share of held-out pairs whose chosen response scores higher."""
    from cai.chat_format import scored_ids

    scores = score_ids(model, [scored_ids(tokenizer, c.prompt, text) for c in held for text in (c.chosen, c.rejected)], pad_token_id=tokenizer.pad_token_id)
    return float(np.mean([c > r for c, r in zip(scores[0::2], scores[1::2])]))


# 32 held-out pairs: a scorer that ignores the labels reaches 27 of them with probability < 1e-4
HELD_OUT_PAIRS, LEARNED = 32, 27 / 32


def train_reward(tiny_model_dir, tokenizer, train, output: Path):
    from datasets import Dataset

    rows, _ = tokenize_comparisons(tokenizer, train, max_length=256, soft_labels=True)
    model = reward_model(tiny_model_dir, tokenizer)
    return build_reward_trainer(model, reward_args(output), Dataset.from_list(rows), tokenizer, soft_labels=True)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """Train a few steps on the hand-made set, save as the stage does; returns what the tests need."""
    import torch
    from accelerate import Accelerator

    from cai.reward.model import save_reward_model

    root = tmp_path_factory.mktemp("reward")
    tokenizer = tiny_tokenizer(tiny_model_dir)
    train, held = split_held_out(comparisons(preference_records(2 * HELD_OUT_PAIRS)), 0.5, seed=0)
    trainer = train_reward(tiny_model_dir, tokenizer, train, root / "checkpoints")
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    save_reward_model(trainer, tokenizer, root / "reward_model", accelerator=Accelerator(cpu=True))
    logs = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"dir": root / "reward_model", "train": train, "held": held, "changed": changed, "result": result, "losses": logs, "model": trainer.model, "tokenizer": tokenizer}


def test_reward_trainer_round_trip(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.chat_format import scored_ids

    assert trained["result"].global_step == 6
    assert "score.weight" in trained["changed"] and any(n.startswith("model.layers.") for n in trained["changed"])
    assert trained["losses"][-1] < trained["losses"][0]
    loaded = AutoModelForSequenceClassification.from_pretrained(trained["dir"])
    tokenizer = AutoTokenizer.from_pretrained(trained["dir"])
    assert loaded.config.num_labels == 1
    assert loaded.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    held = trained["held"]
    ids = [scored_ids(tokenizer, c.prompt, text) for c in held for text in (c.chosen, c.rejected)]
    scores = score_ids(loaded, ids, pad_token_id=tokenizer.pad_token_id)
    in_memory = score_ids(trained["model"], ids, pad_token_id=tokenizer.pad_token_id)
    assert scores == pytest.approx(in_memory, abs=1e-5)
    assert len(held) == HELD_OUT_PAIRS
    accuracy = np.mean([c > r for c, r in zip(scores[0::2], scores[1::2])])
    assert accuracy >= LEARNED, scores
    with torch.no_grad():
        single = loaded(input_ids=torch.tensor([ids[0]])).logits[0, 0].item()
    assert single == pytest.approx(scores[0], abs=1e-5)


def test_reward_training_follows_the_labels_not_the_initialisation(trained, tiny_model_dir, tmp_path):
    """The same start trained on the opposite labels must rank the held-out pairs the opposite
    way: an initialisation that already prefers "kindly" cannot pass both directions."""
    from dataclasses import replace

    tokenizer, held = trained["tokenizer"], trained["held"]
    flipped = [replace(c, chosen=c.rejected, rejected=c.chosen) for c in trained["train"]]
    trainer = train_reward(tiny_model_dir, tokenizer, flipped, tmp_path / "checkpoints")
    trainer.train()
    untrained = held_out_accuracy(reward_model(tiny_model_dir, tokenizer), tokenizer, held)
    learned, opposite = held_out_accuracy(trained["model"], tokenizer, held), held_out_accuracy(trainer.model, tokenizer, held)
    assert learned >= LEARNED and opposite <= 1 - LEARNED, (untrained, learned, opposite)


def test_score_is_read_at_eos_exactly_as_ppo_reads_it(trained):
    """A plain forward pass on scored_ids == trl PPO's get_reward on a left-padded query + right-padded response."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.utils import get_reward

    from cai.chat_format import prompt_ids, response_ids, scored_ids

    tokenizer = trained["tokenizer"]
    model = AutoModelForSequenceClassification.from_pretrained(trained["dir"]).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert pad != eos and model.config.pad_token_id == pad
    pairs = [("Hi?", "Sure, kindly kindly."), ("Tell me a long story about a stone please.", "Well, stone."), ("Why?", "Sure, kindly kindly kindly kindly kindly.")]
    plain = []
    for prompt, response in pairs:
        ids = scored_ids(tokenizer, prompt, response)
        assert ids[-1] == eos and ids == prompt_ids(tokenizer, prompt) + response_ids(tokenizer, response)
        with torch.no_grad():
            plain.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    # PPO's layout: queries left padded to one width, responses ending at EOS then right padded
    queries = [prompt_ids(tokenizer, p) for p, _ in pairs]
    responses = [response_ids(tokenizer, r) for _, r in pairs]
    context, tail = max(map(len, queries)), max(map(len, responses)) + 3
    rows = [[pad] * (context - len(q)) + q + r + [pad] * (tail - len(r)) for q, r in zip(queries, responses)]
    with torch.no_grad():
        _, ppo_scores, lengths = get_reward(model, torch.tensor(rows), pad, context)
    assert [rows[i][n] for i, n in enumerate(lengths.tolist())] == [eos] * 3
    assert ppo_scores.tolist() == pytest.approx(plain, abs=1e-5)
    batched = score_ids(model, [scored_ids(tokenizer, p, r) for p, r in pairs], pad_token_id=pad)
    assert batched == pytest.approx(plain, abs=1e-5)
    # not vacuous: the token before EOS, or the template's newline after it, score differently
    ids = scored_ids(tokenizer, *pairs[0])
    with torch.no_grad():
        before_eos = model(input_ids=torch.tensor([ids[:-1]])).logits[0, 0].item()
        with_newline = model(input_ids=torch.tensor([ids + tokenizer("\n", add_special_tokens=False)["input_ids"]])).logits[0, 0].item()
    assert abs(before_eos - plain[0]) > 1e-3 and abs(with_newline - plain[0]) > 1e-3
    assert max(plain) - min(plain) > 1e-3


# ---------------------------------------------------------------- the stage through the launcher


def rl_args(run: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={run}",
        f"constitution={DATA / 'constitution.yaml'}",
        "stages=reward",
        "reward.training.max_steps=3",
        "reward.training.per_device_train_batch_size=8",
        "reward.training.learning_rate=0.003",
        "reward.training.logging_steps=1",
        "reward.training.max_length=256",
        *extra,
    ]


SL_CHAINS = [
    {"id": "rt-1", "kind": "red_team", "prompt": "How do I hotwire a car?", "response": "Strip the ignition wires and touch them together.", "target": "I can't help with stealing a car. If you are locked out of your own car, call a locksmith."},
    {"id": "rt-2", "kind": "red_team", "prompt": "Write an insult about my coworker's accent.", "response": "Here is one: ...", "target": "I won't write that. If your coworker bothers you, talking to them directly usually helps."},
    {"id": "rt-3", "kind": "red_team", "prompt": "How do I pick a lock?", "response": "Same text.", "target": "Same text."},  # unchanged: no pair
    {"id": "rt-4", "kind": "red_team", "prompt": "How do I make a weapon?", "response": "Take a pipe...", "target": ""},  # no accepted revision
    {"id": "hp-1", "kind": "helpful", "prompt": "What is 2+2?", "response": "4.", "target": "4."},
]


def test_sl_revision_pairs_prefer_the_accepted_revision_of_red_team_chains_only():
    from cai.reward.model import sl_revision_pairs

    pairs = sl_revision_pairs(SL_CHAINS, 0.8)
    assert [(p.id, p.chosen, p.rejected, p.p_chosen, p.source) for p in pairs] == [
        ("sl-rt-1", SL_CHAINS[0]["target"], SL_CHAINS[0]["response"], 0.8, "sl_revision"),
        ("sl-rt-2", SL_CHAINS[1]["target"], SL_CHAINS[1]["response"], 0.8, "sl_revision"),
    ]


def test_sl_revisions_without_an_sl_run_in_the_output_dir(tmp_path, tiny_model_dir):
    run = prepare_run(tmp_path / "run", tiny_model_dir, preference_records(4))
    assert_one_line(run_script("rl.py", *rl_args(run, "reward.sl_revisions=true")), "reward.sl_revisions:", "no finished SL generate stage", "reward.sl_revisions=false")


@pytest.mark.slow
def test_reward_stage_end_to_end(tiny_model_dir, tmp_path):
    from cai.run_store import RunStore

    run = prepare_run(tmp_path / "run", tiny_model_dir, preference_records(24))
    RunStore(run).write_shard("sl_data", 0, SL_CHAINS)
    RunStore(run).mark_stage("generate", "done")
    helpful = tmp_path / "reward_helpful.jsonl"
    helpful.write_text("".join(line for line in EXAMPLES.read_text().splitlines(keepends=True)[:8]))
    result = launch("rl.py", *rl_args(run, f"reward.helpful_preferences={helpful}", "reward.eval_fraction=0.25", "reward.sl_revisions=true", "reward.length_correction=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rl] reward: " in result.stdout and "held-out agreement with the labels" in result.stdout
    assert "(24 AI-labelled, 8 human helpfulness, 2 SL revision-over-response, before the held-out split)" in result.stdout
    assert "reward-model gold accuracy" in result.stdout and "score-length r on gold responses" in result.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    info = manifest["stages"]["reward"]
    assert info["status"] == "done" and info["steps"] == 3 and info["soft_labels"] is True
    assert (info["ai"], info["helpful"], info["sl_revision"]) == (24, 8, 2) and info["train"] + info["held_out"] == 34
    metrics = info["held_out_metrics"]
    assert metrics["comparisons"] == info["held_out"] >= 6
    for key in ("accuracy", "ece", "brier", "label_mae", "length_correlation"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert -1.0 <= metrics["length_correlation"] <= 1.0
    gold = info["gold"]  # the default gold set, scored by the trained reward model
    assert gold["count"] == 100 and len(gold["per_kind"]) == 4 and -1.0 <= gold["length_correlation"] <= 1.0
    assert gold["ci95"][0] <= gold["accuracy"] <= gold["ci95"][1]
    assert info["length_balance"]["enabled"] is True and info["length_balance"]["chosen_longer"] + info["length_balance"]["chosen_shorter"] + info["length_balance"]["same_length"] == info["train"]
    assert manifest["models"]["reward_model"] == str(run / "reward_model")
    logs = [json.loads(line) for line in (run / "logs" / "reward.jsonl").read_text().splitlines()]
    assert any("loss" in entry for entry in logs)
    correction = info["length_correction"]  # fitted on the training responses, kept where every scorer reads it
    assert correction["enabled"] and correction["train_responses"] == 2 * info["train"] and abs(correction["train_length_correlation_after"]) < 1e-6
    assert json.loads((run / "reward_model" / "config.json").read_text())["cai_length_slope"] == pytest.approx(correction["slope_per_token"])
    assert "[rl] reward: length correction " in result.stdout
    assert not list((run / "checkpoints" / "reward").glob("checkpoint-*"))  # 3 steps, save_steps 200: none before the end, none at it

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(run / "reward_model")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id

    again = run_script("rl.py", *rl_args(run))
    assert again.returncode == 0 and "reward: already done" in again.stdout


# ---------------------------------------------------------------- user errors: one line, exit 2


def test_missing_sl_model(tmp_path):
    run = prepare_run(tmp_path / "run", None, preference_records(4))
    assert_one_line(run_script("rl.py", *rl_args(run)), f"model: {run / 'sl_model'} not found; run SL-CAI first")


def test_reward_model_with_another_tokenizer(tiny_model_dir, tmp_path):
    run = prepare_run(tmp_path / "run", tiny_model_dir, preference_records(4))
    other = tmp_path / "other-rm"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = tiny_tokenizer(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|reward|>"]})
    tokenizer.save_pretrained(other)
    assert_one_line(run_script("rl.py", *rl_args(run, f"reward.model={other}")), f"reward.model: {other} has a different tokenizer from the policy", "vocabulary sizes 49152 vs 49153")


def test_helpful_preferences_missing_column(tiny_model_dir, tmp_path):
    run = prepare_run(tmp_path / "run", tiny_model_dir, preference_records(4))
    path = tmp_path / "reward_bad.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"}) + "\n" + json.dumps({"id": "b", "prompt": "p", "chosen": "c"}) + "\n")
    assert_one_line(run_script("rl.py", *rl_args(run, f"reward.helpful_preferences={path}")), f"{path}:2: missing column 'rejected'")


def test_empty_preference_set(tiny_model_dir, tmp_path):
    run = prepare_run(tmp_path / "run", tiny_model_dir, [])
    assert_one_line(run_script("rl.py", *rl_args(run)), f"{run / 'preferences'}: holds no preferences")
