"""Checks that need a CUDA GPU (`gpu` marker, skipped without one; scripts/gpu_check.sh runs them
with the bf16 demo stages, vLLM and DeepSpeed), plus the CPU-side check of that script."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_script_parses_and_refuses_without_a_gpu(tmp_path):
    import torch

    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run the script itself")
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "check")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs a CUDA device" in result.stderr, result.stderr
    assert not (tmp_path / "check").exists()


def tiny_sft_trainer(tiny_model_dir, output, *, learning_rate: float):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from cai import models
    from cai.config import TrainingConfig
    from cai.training import trainer_config

    ref = models.resolve(str(tiny_model_dir))
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    model = models.load_causal_lm(ref, trainable=True)
    settings = TrainingConfig(learning_rate=learning_rate, max_steps=3, per_device_train_batch_size=2, logging_steps=1, save_steps=1000, lr_scheduler_type="constant", max_length=64)
    args = trainer_config(SFTConfig, settings, section="sft", output_dir=output, seed=0, completion_only_loss=True)
    rows = [{"prompt": f"Question {i}?", "completion": " A short, kind answer."} for i in range(6)]
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


@pytest.mark.gpu
def test_bf16_training_updates_fp32_master_weights(tiny_model_dir, tmp_path):
    """bf16 autocast with fp32 masters: a 1e-5 AdamW step moves almost every weight. On bf16
    weights (spacing ~1e-4 at 0.02) the same step would round to zero for most of them."""
    import torch

    from cai import models

    assert models.default_dtype() == torch.bfloat16
    trainer = tiny_sft_trainer(tiny_model_dir, tmp_path, learning_rate=1e-5)
    assert trainer.args.bf16
    weight = trainer.model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float32
    before = weight.detach().clone()
    trainer.train()
    changed = (weight.detach() != before).float().mean().item()
    assert changed > 0.9, changed


@pytest.mark.gpu
@pytest.mark.needs_ppo
def test_step0_check_under_bf16_autocast_on_gpu(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from cai import chat_format, models
    from cai.errors import CaiError
    from cai.policy.invariants import check_step0

    tokenizer = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    queries = tokenizer.pad({"input_ids": [chat_format.prompt_ids(tokenizer, t) for t in ("How can I break into a car?", "Hi")]}, return_tensors="pt")["input_ids"]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda().eval()
    settings = dict(pad_token_id=tokenizer.pad_token_id, stop_token_id=models.end_of_turn_id(tokenizer), temperature=0.7, response_length=16, tolerance=1e-3, autocast=torch.bfloat16)
    gaps = check_step0(policy, reference, queries, **settings)
    assert gaps["step0/ratio_gap"] < 5e-2
    with torch.no_grad():
        reference.lm_head.weight.mul_(1.5)
    with pytest.raises(CaiError, match="reference's log-probs differ"):
        check_step0(policy, reference, queries, **settings)


@pytest.mark.gpu
def test_vllm_generator_is_seeded(tiny_model_dir):
    pytest.importorskip("vllm")
    from cai import models
    from cai.config import GenerationConfig
    from cai.generation import VLLMGenerator

    tokenizer = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    settings = GenerationConfig(max_new_tokens=8, temperature=0.8, backend="vllm", vllm_gpu_memory_utilization=0.3)
    generator = VLLMGenerator(str(tiny_model_dir), tokenizer, settings, seed=0)
    prompts = [chat_format_prompt(tokenizer, p) for p in ("Hi", "Tell me a joke")]
    first = generator.generate(prompts, seeds=[1, 2])
    assert len(first) == 2 and all(isinstance(t, str) for t in first)
    assert generator.generate(prompts, seeds=[1, 2]) == first


def chat_format_prompt(tokenizer, text: str) -> str:
    from cai.chat_format import prompt_text

    return prompt_text(tokenizer, text)
