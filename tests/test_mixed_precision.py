"""Mixed precision without a GPU: trainable weights load as fp32 masters, frozen ones in
`default_dtype()`, the trainer config autocasts to bf16 where CUDA supports it, and PPO's step-0
check allows half-precision rounding."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bf16_gpu(monkeypatch):
    """What `models.default_dtype()` and the trainer config see on a bf16-capable GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return torch


def test_trainable_models_load_as_fp32_masters_and_frozen_ones_in_bf16(tiny_model_dir, bf16_gpu):
    from cai import models
    from cai.reward.model import load_reward_base

    torch = bf16_gpu
    ref = models.resolve(str(tiny_model_dir))
    assert models.default_dtype() == torch.bfloat16
    trained = models.load_causal_lm(ref, trainable=True)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    frozen = models.load_causal_lm(ref)
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16}
    value = load_reward_base(ref, trainable=True, setting="reward_model")
    assert {p.dtype for p in value.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="must load in fp32"):
        models.load_causal_lm(ref, dtype=models.default_dtype(), trainable=True)


def test_trainer_config_autocasts_to_bf16_on_a_bf16_gpu(bf16_gpu, tmp_path):
    from cai.config import TrainingConfig
    from cai.training import trainer_config

    @dataclasses.dataclass
    class Recorded:  # trl's configs refuse bf16 on a machine without a GPU; record what they would get
        output_dir: str = ""
        seed: int = 0
        report_to: object = None
        save_strategy: str = ""
        logging_strategy: str = ""
        bf16: bool = False
        disable_tqdm: bool = False
        gradient_checkpointing: bool = False
        learning_rate: float = 0.0

    assert trainer_config(Recorded, TrainingConfig(), section="training", output_dir=tmp_path, seed=0).bf16 is True


def test_no_stage_loads_a_trainable_model_with_a_dtype():
    """Every `load_causal_lm(..., trainable=True)` / `load_reward_base(..., trainable=True)` leaves the
    dtype to `models.weights_dtype` (fp32); a bf16 `default_dtype()` there would train bf16 weights."""
    offenders = []
    for path in sorted((ROOT / "cai").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            keywords = {k.arg: k.value for k in node.keywords}
            trainable = keywords.get("trainable")
            if name in ("load_causal_lm", "load_reward_base") and isinstance(trainable, ast.Constant) and trainable.value is True and "dtype" in keywords:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_step0_tolerance_floor_by_precision():
    import torch

    from cai.policy.invariants import step0_tolerance

    assert step0_tolerance(1e-3, torch.float32) == 1e-3
    assert step0_tolerance(1e-3, torch.bfloat16) == 5e-2
    assert step0_tolerance(1e-3, torch.float16) == 2e-2
    assert step0_tolerance(0.1, torch.bfloat16) == 0.1  # a looser user setting stands


@pytest.mark.needs_ppo
def test_step0_check_passes_in_bf16_and_still_catches_other_weights(tiny_model_dir):
    """A bf16 policy whose rollout log-probs differ from its forward pass by rounding passes the
    default ppo.step0_tolerance (1e-3 is an fp32 figure); a reference with other weights still fails."""
    import torch
    from transformers import AutoModelForCausalLM

    from cai import chat_format, models
    from cai.errors import CaiError
    from cai.policy.invariants import check_step0

    tokenizer = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    texts = ["How can I break into a car?", "Write an insult about my coworker."]
    queries = tokenizer.pad({"input_ids": [chat_format.prompt_ids(tokenizer, t) for t in texts]}, return_tensors="pt")["input_ids"]
    settings = dict(pad_token_id=tokenizer.pad_token_id, stop_token_id=tokenizer.eos_token_id, temperature=0.7, response_length=8, tolerance=1e-3)

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    with torch.no_grad():  # logits of a trained model's size, so bf16 rounding shows in the log-probs
        policy.lm_head.weight.mul_(40.0)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    reference.load_state_dict(policy.state_dict())
    gaps = check_step0(policy, reference, queries, **settings)
    assert 1e-3 < gaps["step0/ratio_gap"] < 5e-2  # the old fixed 1e-3 would have stopped this run

    with torch.no_grad():
        reference.lm_head.weight.mul_(1.5)
    with pytest.raises(CaiError, match="reference's log-probs differ"):
        check_step0(policy, reference, queries, **settings)
