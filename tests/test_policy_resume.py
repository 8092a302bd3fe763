"""The policy stage's one resume check: checkpoints of a killed run resume only on the same inputs
(SL model, reward model, algorithm settings, prompts, seed); anything else is one error naming the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import DATA

from cai.config import RLRunConfig, load_config
from cai.errors import CaiError
from cai.run_store import RunStore


class Built(Exception):
    """Raised instead of building a trainer: the resume check has passed."""


def overrides(run: Path, model: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={run}",
        f"model={model}",
        f"constitution={DATA / 'constitution.yaml'}",
        f"prompts.red_team={DATA / 'red_team.jsonl'}",
        "stages=policy",
        "rl.algorithm=grpo",
        "grpo.num_generations=2",
        *extra,
    ]


@pytest.fixture
def killed_run(tmp_path, tiny_model_dir, monkeypatch):
    """A run whose policy stage started (grpo) and left a checkpoint, and a `launch(*extra)` that
    runs the policy stage up to building its trainer."""
    import accelerate

    from cai.policy import stage

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model_dir, run / "reward_model")  # any model with the policy's tokenizer
    RunStore(run).mark_stage("reward", "done")

    def build_run(*args, **kwargs):
        raise Built

    monkeypatch.setattr(stage, "build_run", build_run)
    accelerator = accelerate.Accelerator(cpu=True)

    def launch(*extra: str) -> None:
        config = load_config(RLRunConfig, None, overrides(run, tiny_model_dir, *extra))
        with pytest.raises(Built):
            stage.run_policy(config, RunStore(run), accelerator)

    launch()
    (run / "checkpoints" / "policy" / "checkpoint-1").mkdir(parents=True)
    return run, launch


@pytest.mark.parametrize(
    "change",
    ["grpo.kl_coef=0.5", "training.learning_rate=0.123", "seed=7", "lora.enabled=true", "rl.algorithm=rloo", "prompts.max_red_team=3", "reward model retrained"],
)
def test_changed_inputs_refuse_to_resume_the_old_policy(killed_run, change):
    run, launch = killed_run
    extra = [change, "rloo.num_generations=2"] if "=" in change else []
    if change == "reward model retrained":
        weights = run / "reward_model" / "model.safetensors"
        stamp = weights.stat().st_mtime_ns + 10**9
        os.utime(weights, ns=(stamp, stamp))
    with pytest.raises(CaiError, match=r"checkpoints/policy: made from other inputs .* set force=true to redo the stage .*or use a new output_dir"):
        launch(*extra)


def test_same_inputs_resume_and_logging_settings_may_change(killed_run):
    _, launch = killed_run
    launch()
    launch("training.logging_steps=3", "training.save_steps=7")


def test_without_checkpoints_new_inputs_simply_start(killed_run):
    run, launch = killed_run
    shutil.rmtree(run / "checkpoints" / "policy" / "checkpoint-1")
    launch("grpo.kl_coef=0.5")
