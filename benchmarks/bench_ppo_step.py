"""PPO step time and peak memory, full vs LoRA (and full with activation checkpointing), with one step broken down.

Run: python benchmarks/bench_ppo_step.py [--model embedded] [--steps 2] [--modes full lora full-checkpointing] [--set KEY=VALUE ...]

Each mode runs in its own process (so its peak RSS is its own) and builds PPO as the `policy`
stage does: the settings of configs/demo/rl.yaml (8 rollouts of up to 40 tokens per step, 4 PPO
epochs; `--set` overrides any of them, e.g. `--set ppo.response_length=8`), the stage's own
prompt selection (`cai.policy.stage.usable_prompts`) and `cai.policy.ppo.build_ppo`, with a
reward model initialised from the policy's weights (bench_lora_ppo_memory.make_reward_model),
then `--steps` PPO steps of trl's unchanged `PPOTrainer.train`. Timers wrap the functions that
loop calls by name (`batch_generation`, `forward`, `get_reward` in trl's module, the trainer's
`accelerator.backward` and `optimizer.step`) and split a step into:
- rollout generation: `batch_generation` (sampling the responses, with their logits);
- forward passes without gradients: reference (`forward` under no_grad; LoRA: the policy with
  its adapter disabled), value and reward (`get_reward`);
- PPO epochs: forward with gradients (policy and value), backward, optimizer step, over
  num_ppo_epochs x mini-batches;
- other: the rest of the step (advantages, logging, the rollout monitors, the LR schedule).
The breakdown is of the last step (the first one also pays one-off costs); time per step is the
mean over the steps after the first when there are several.

Activation checkpointing: trl's PPOConfig defaults `gradient_checkpointing=True` and cai passes
`training.gradient_checkpointing` (default false) explicitly. The `full-checkpointing` mode sets
it true, reports whether the built policy and value model have it on (trl's PPOTrainer never
calls `gradient_checkpointing_enable`, so they do not), then turns it on by hand on both to
measure what it costs. The last line prints LoRA's time per step and peak RSS as ratios of full
fine-tuning (goal, issue 12: memory <= 0.5x).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("full", "lora", "full-checkpointing")
PARTS = ("generation", "reference forward", "value forward", "reward forward", "PPO forward", "PPO backward", "optimizer step")


class StepTimer:
    """Seconds per part of each PPO step; a step closes when trl's callbacks reach on_step_end."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.started = 0.0

    def wrap(self, part, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            name = part(*args) if callable(part) else part
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start

        return timed

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class Steps(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                timer.steps.append({"step": now - timer.started, **timer.current})
                timer.current, timer.started = {}, now

        return Steps()


def measure(mode: str, model: str, reward_dir: Path, steps: int, overrides: list[str]) -> dict:
    """Build PPO in this process as the policy stage does, run `steps` steps, and report times and memory."""
    import torch
    from accelerate import Accelerator

    from cai import models
    from cai.config import RLRunConfig, load_config
    from cai.launch import autocast_like_the_run, quiet_libraries
    from cai.policy.ppo import build_ppo
    from cai.policy.stage import usable_prompts

    quiet_libraries()
    base = load_config(RLRunConfig, ROOT / "configs/demo/rl.yaml", [f"model={model}", *overrides])
    batch = base.training.per_device_train_batch_size * base.training.gradient_accumulation_steps
    config = load_config(
        RLRunConfig,
        ROOT / "configs/demo/rl.yaml",
        [
            f"model={model}",
            f"lora.enabled={'true' if mode == 'lora' else 'false'}",
            f"training.gradient_checkpointing={'true' if mode == 'full-checkpointing' else 'false'}",
            f"ppo.total_episodes={steps * batch}",
            "training.save_steps=100000",
            *overrides,
        ],
    )
    os.chdir(ROOT)  # prompt files are relative to the repository, as in a launch from its root
    models.use_precision(config.precision)  # as a launch does (cai/launch.py); --set precision=fp32 for the recorded figures
    autocast_like_the_run()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as scratch:
        ref = models.resolve(model)
        tokenizer = models.load_tokenizer(ref)
        _, queries = usable_prompts(config, tokenizer)
        session = build_ppo(config, Accelerator(), tokenizer=tokenizer, policy_ref=ref, reward_ref=models.resolve(str(reward_dir)), query_ids=queries, checkpoints=Path(scratch), callbacks=[timer.callback()])
        trainer = session.trainer
        wrapper = trainer.accelerator.unwrap_model(trainer.model)
        checkpointing = {"policy": bool(wrapper.policy.is_gradient_checkpointing), "value": bool(wrapper.value_model.is_gradient_checkpointing)}
        if mode == "full-checkpointing":  # what trl would cost if it did turn it on
            for module in (wrapper.policy, wrapper.value_model):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trl_module = sys.modules[type(trainer).__mro__[1].__module__]  # where trl's train loop looks its helpers up
        trl_module.batch_generation = timer.wrap("generation", trl_module.batch_generation)
        trl_module.forward = timer.wrap(lambda *a: "PPO forward" if torch.is_grad_enabled() else "reference forward", trl_module.forward)
        trl_module.get_reward = timer.wrap(lambda m, *a: "reward forward" if m is trainer.reward_model else "value forward", trl_module.get_reward)
        trainer.accelerator.backward = timer.wrap("PPO backward", trainer.accelerator.backward)
        trainer.optimizer.step = timer.wrap("optimizer step", trainer.optimizer.step)
        session.train()
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    per_step = [s["step"] for s in timer.steps]
    return {
        "mode": mode,
        "steps": per_step,
        "breakdown": timer.steps[-1],
        "checkpointing_after_build": checkpointing,
        "trainable_params": trainable,
        "rollouts_per_step": batch,
        "response_length": config.ppo.response_length,
        "num_ppo_epochs": config.ppo.num_ppo_epochs,
        "threads": torch.get_num_threads(),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def step_seconds(result: dict) -> float:
    steps = result["steps"]
    later = steps[1:] or steps
    return sum(later) / len(later)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="policy model reference (hub id, directory, .gguf or embedded)")
    parser.add_argument("--steps", type=int, default=2, help="PPO steps per mode (the first also pays one-off costs)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a setting of configs/demo/rl.yaml (repeatable)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--reward-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process: one mode, JSON on the last line
        print(json.dumps(measure(args.mode, args.model, Path(args.reward_dir), args.steps, args.overrides)))
        return 0

    from bench_lora_ppo_memory import make_reward_model

    from cai.launch import quiet_libraries

    quiet_libraries()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        reward_dir = Path(scratch) / "reward_model"
        make_reward_model(args.model, reward_dir)
        for mode in args.modes:
            command = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--reward-dir", str(reward_dir), "--steps", str(args.steps)]
            command += [f"--set={o}" for o in args.overrides]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])

    first = next(iter(results.values()))
    print(
        f"PPO step, model={args.model}, {first['rollouts_per_step']} rollouts x up to {first['response_length']} tokens, "
        f"{first['num_ppo_epochs']} PPO epochs, {args.steps} steps per mode, CPU fp32, torch threads={first['threads']}" + (f", overrides: {' '.join(args.overrides)}" if args.overrides else "")
    )
    print(f"{'':<24}" + "".join(f"{mode:>20}" for mode in results))
    print(f"{'time per step':<24}" + "".join(f"{step_seconds(r):>18.1f} s" for r in results.values()))
    print(f"{'  each step':<24}" + "".join(f"{' '.join(f'{s:.1f}' for s in r['steps']):>20}" for r in results.values()))
    for part in PARTS:
        print(f"{'  ' + part:<24}" + "".join(f"{r['breakdown'].get(part, 0.0):>18.1f} s" for r in results.values()))
    print(f"{'  other':<24}" + "".join(f"{r['breakdown']['step'] - sum(r['breakdown'].get(p, 0.0) for p in PARTS):>18.1f} s" for r in results.values()))
    print(f"{'peak RSS':<24}" + "".join(f"{r['peak_rss'] / 2**20:>16,.0f} MiB" for r in results.values()))
    print(f"{'trainable params':<24}" + "".join(f"{r['trainable_params'] / 1e6:>18.2f} M" for r in results.values()))
    if "full-checkpointing" in results:
        flags = results["full-checkpointing"]["checkpointing_after_build"]
        on = [name for name, value in flags.items() if value]
        print(
            f"activation checkpointing with training.gradient_checkpointing=true: trl turned it on for {', '.join(on) if on else 'neither policy nor value model'}; turned on by hand it costs {step_seconds(results['full-checkpointing']) / step_seconds(results['full']):.2f}x the time per step"
            if "full" in results
            else f"activation checkpointing: on after build for {on or 'neither model'}"
        )
    if "full" in results and "lora" in results:
        full, lora = results["full"], results["lora"]
        print(f"ratio: LoRA / full: {step_seconds(lora) / step_seconds(full):.2f}x the time per step, {lora['peak_rss'] / full['peak_rss']:.2f}x the peak RSS (goal: memory <= 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
