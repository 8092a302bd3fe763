"""Experiment tracking through transformers' `report_to`: checked at load, and a real run writing TensorBoard events (offline)."""

from __future__ import annotations

import shutil

import pytest
from helpers import ROOT

from cai.config import RLRunConfig, SLRunConfig, load_config
from cai.errors import CaiError
from cai.run_store import RunStore


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (RLRunConfig, "reward.training.report_to=[tensorbord]", "reward.training.report_to: unknown tracker 'tensorbord'; valid: tensorboard, trackio, wandb"),
        (SLRunConfig, "sft.report_to=[definitely_missing]", "sft.report_to: unknown tracker 'definitely_missing'"),
    ],
)
def test_unknown_tracker_is_named_at_load(cls, override, message):
    with pytest.raises(CaiError, match=message.replace("[", "\\[")):
        load_config(cls, None, [override])


def test_uninstalled_tracker_is_named_at_load_with_its_pip_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(CaiError, match="training.report_to: wandb is not installed; pip install wandb"):
        load_config(RLRunConfig, None, ["training.report_to=[wandb]", "stages=eval"])
    assert load_config(RLRunConfig, None, ["training.report_to=[tensorboard]", "stages=eval"]).training.report_to == ["tensorboard"]


@pytest.mark.slow
def test_tensorboard_receives_the_training_curves(tiny_model_dir, tmp_path, monkeypatch):
    """`training.report_to=[tensorboard]` on a real (DPO, 2 steps) policy stage: event files with the loss, next to the JSONL log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cai import rl

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    root = tmp_path / "run"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "sl_model")
    store = RunStore(root)
    rows = [
        {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": [{"role": "assistant", "content": "A careful answer."}], "rejected": [{"role": "assistant", "content": "Go away."}], "p_chosen": 0.8}
        for i in range(4)
    ]
    store.write_shard("preferences", 0, rows)
    store.mark_stage("label", "done", comparisons=4)
    args = [
        f"output_dir={root}",
        f"constitution={ROOT / 'tests' / 'data' / 'constitution.yaml'}",
        f"prompts.red_team={ROOT / 'tests' / 'data' / 'red_team.jsonl'}",
        "stages=policy",
        "rl.algorithm=dpo",
        "training.max_steps=2",
        "training.logging_steps=1",
        "training.per_device_train_batch_size=2",
        "training.max_length=128",
        "training.report_to=[tensorboard]",
        "generation.max_new_tokens=4",
    ]
    assert rl.main(args) == 0
    events = sorted((root / "checkpoints" / "policy" / "runs").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in (root / "checkpoints").rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "train/loss" in scalars
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2]
