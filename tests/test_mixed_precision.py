"""Mixed precision without a GPU: trainable weights load as fp32 masters, frozen ones in
`default_dtype()`, the trainer config autocasts to bf16 where the run's `precision` resolves to it
(a bf16 GPU, a CPU with bf16 instructions), and PPO's step-0 check allows half-precision rounding."""

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


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bf16 instructions (AVX512-BF16), no GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    return torch


def test_precision_auto_takes_bf16_only_where_the_cpu_has_bf16_instructions(bf16_cpu, monkeypatch):
    from cai import models

    torch = bf16_cpu
    models.use_precision("auto")
    assert (models.compute_precision(), models.default_dtype(), models.train_in_bf16()) == ("bf16", torch.bfloat16, True)
    models.use_precision("fp32")  # an explicit fp32 stands on bf16 hardware
    assert (models.compute_precision(), models.default_dtype(), models.train_in_bf16()) == ("fp32", torch.float32, False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False}, raising=False)
    models.use_precision("auto")
    assert (models.compute_precision(), models.default_dtype()) == ("fp32", torch.float32)
    models.use_precision("bf16")  # an explicit bf16 stands where it is emulated
    assert models.default_dtype() == torch.bfloat16


def test_trainer_config_trains_bf16_on_a_bf16_cpu_with_trls_own_config(bf16_cpu, tmp_path):
    """trl's configs refuse bf16 without a GPU unless use_cpu is set; cai sets it exactly then."""
    from trl import RewardConfig

    from cai import models
    from cai.config import TrainingConfig
    from cai.training import trainer_config

    models.use_precision("auto")
    args = trainer_config(RewardConfig, TrainingConfig(), section="reward.training", output_dir=tmp_path, seed=0)
    assert args.bf16 is True and args.use_cpu is True and args.mixed_precision == "bf16"
    models.use_precision("fp32")
    args = trainer_config(RewardConfig, TrainingConfig(), section="reward.training", output_dir=tmp_path, seed=0)
    assert args.bf16 is False and args.use_cpu is False


def test_every_accelerator_of_a_bf16_run_autocasts(bf16_cpu, monkeypatch):
    """trl's PPO builds its own Accelerator from ACCELERATE_MIXED_PRECISION: a bf16 run sets it, an fp32 run leaves the launcher's."""
    from cai import models
    from cai.launch import autocast_like_the_run

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    models.use_precision("auto")
    assert autocast_like_the_run() is None
    import os

    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert autocast_like_the_run() == "fp16"  # said on the launch line
    models.use_precision("fp32")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert autocast_like_the_run() is None and os.environ["ACCELERATE_MIXED_PRECISION"] == "fp16"


def test_a_relaunch_in_another_precision_does_not_resume_the_records(bf16_cpu, tmp_path):
    from cai import models
    from cai.errors import CaiError
    from cai.run_store import RunStore, check_same_inputs

    store = RunStore(tmp_path / "run")
    models.use_precision("fp32")
    check_same_inputs(store, stage="generate", records_dir="sl_data", fingerprint="abc")
    assert store.stage_info("generate")["inputs"] == "abc"  # fp32 fingerprints are those of earlier runs
    store.write_shard("sl_data", 0, [{"id": "a"}])
    check_same_inputs(store, stage="generate", records_dir="sl_data", fingerprint="abc")  # same precision: resumes
    models.use_precision("bf16")
    with pytest.raises(CaiError, match="precision"):
        check_same_inputs(store, stage="generate", records_dir="sl_data", fingerprint="abc")


def test_bf16_on_a_gpu_without_it_is_one_error_before_anything_loads(monkeypatch, tmp_path):
    import torch

    from cai.config import SLRunConfig
    from cai.errors import CaiError
    from cai.preflight import check_before_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    config = SLRunConfig(output_dir=str(tmp_path / "run"), precision="bf16", stages=["sft"])
    with pytest.raises(CaiError, match="precision: bf16 is not supported by Tesla V100; use precision=auto or fp32"):
        check_before_run(config)
    assert not (tmp_path / "run").exists()
