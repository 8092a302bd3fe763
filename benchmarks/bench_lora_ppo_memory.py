"""Memory of a PPO run with and without LoRA, built exactly as the `ppo` stage builds it.

Run: python benchmarks/bench_lora_ppo_memory.py [--model embedded] [--response-length 16]

Each mode runs in its own process (so peak RSS is its own): cai.policy.ppo.build_ppo on
the model (policy, reference) and a reward model made from the same weights (value, reward),
then one PPO step, so that gradients and Adam's moments exist. Reported per mode:
- weights: bytes of distinct parameter tensors across policy, reference, value and reward
  (a base shared by LoRA counts once);
- trainable, gradients, optimizer: bytes of trained parameters, of their gradients (the same,
  alive from backward to the optimizer step), and of Adam's two moments;
- peak RSS of the process (includes the Python/torch runtime, the same in both modes).
Full fine-tuning holds four models plus grads and two Adam moments for policy and value;
LoRA holds two frozen bases (policy = reference, value = reward) and small adapters.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_reward_model(model: str, directory: Path) -> None:
    """A sequence-classification model (num_labels=1) initialised from the policy's weights."""
    from transformers import AutoModelForSequenceClassification

    from cai import models

    ref = models.resolve(model)
    tokenizer = models.load_tokenizer(ref)
    reward = AutoModelForSequenceClassification.from_pretrained(ref.path, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        key = (tensor.data_ptr(), tensor.numel())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def measure(mode: str, model: str, reward_dir: Path, response_length: int) -> dict:
    """Build PPO in this process, run one step, and report its memory."""
    from accelerate import Accelerator

    from cai import models
    from cai.chat_format import prompt_ids
    from cai.config import RLRunConfig, load_config
    from cai.launch import quiet_libraries
    from cai.policy.ppo import build_ppo

    quiet_libraries()
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(
            RLRunConfig,
            None,
            [
                f"model={model}",
                f"lora.enabled={'true' if mode == 'lora' else 'false'}",
                "training.per_device_train_batch_size=2",
                "training.max_steps=1",
                "training.save_steps=1000",
                f"ppo.response_length={response_length}",
                "ppo.num_ppo_epochs=1",
                "ppo.local_rollout_forward_batch_size=2",
            ],
        )
        ref = models.resolve(model)
        tokenizer = models.load_tokenizer(ref)
        prompts = ["How do I pick a lock?", "Write a short poem about the sea.", "What is the capital of France?", "Tell me a joke."]
        session = build_ppo(
            config,
            Accelerator(),
            tokenizer=tokenizer,
            policy_ref=ref,
            reward_ref=models.resolve(str(reward_dir)),
            query_ids=[prompt_ids(tokenizer, p) for p in prompts],
            checkpoints=Path(scratch),
            callbacks=[],
        )
        trainer = session.trainer
        trainer.args.report_to = []
        session.train()
        wrapper = trainer.accelerator.unwrap_model(trainer.model)
        modules = [wrapper.policy, wrapper.value_model, session.reward] + ([trainer.ref_model] if trainer.ref_model is not None else [])
        params = [p for m in modules for p in m.parameters()] + [p for p in getattr(session.reward, "inner", session.reward).parameters()]
        trainable = [p for p in params if p.requires_grad]
        state = [t for s in trainer.optimizer.state.values() for t in s.values() if hasattr(t, "numel") and t.dim() > 0]
        return {
            "mode": mode,
            "weights": tensor_bytes(p.data for p in params),
            "trainable": tensor_bytes(p.data for p in trainable),
            "gradients": tensor_bytes(p.data for p in trainable),  # live between backward and step (trl then sets them to None)
            "optimizer": tensor_bytes(state),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--reward-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process: one mode, JSON on the last line
        print(json.dumps(measure(args.mode, args.model, Path(args.reward_dir), args.response_length)))
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as scratch:
        reward_dir = Path(scratch) / "reward_model"
        make_reward_model(args.model, reward_dir)
        results = {}
        for mode in ("full", "lora"):
            command = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--reward-dir", str(reward_dir), "--response-length", str(args.response_length)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    print(f"PPO memory, model={args.model}, one step (batch 2, response_length {args.response_length}), CPU fp32")
    print(f"{'':<24}{'full':>16}{'LoRA':>16}{'full / LoRA':>14}")
    for key, label in (("weights", "weights (distinct)"), ("trainable", "trainable params"), ("gradients", "gradients"), ("optimizer", "Adam state"), ("peak_rss", "peak RSS")):
        ratio = full[key] / lora[key] if lora[key] else float("inf")
        print(f"{label:<24}{mib(full[key]):>16}{mib(lora[key]):>16}{ratio:>13.1f}x")
    static_full = full["weights"] + full["gradients"] + full["optimizer"]
    static_lora = lora["weights"] + lora["gradients"] + lora["optimizer"]
    print(f"{'weights+grads+Adam':<24}{mib(static_full):>16}{mib(static_lora):>16}{static_full / static_lora:>13.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
