"""PPO through trl's `experimental.ppo.PPOTrainer`: policy/reference from the SL model, value from the reward model.

Where this departs from trl's PPO example, and why:
- The reward model is handed to trl inside a thin view that records what it scores, so the
  reward-hacking monitors (response length, distinct-n, EOS rate) are computed on exactly the
  rollouts PPO used and logged next to reward and KL, by overriding the documented `log` hook.
- With LoRA the value model is a LoRA adapter (plus its head) on the reward model, and the
  reward is that same base with the adapter disabled and the original head: policy and
  reference share one frozen base, value and reward another (trl would hold four full models).
- trl's PPO cannot resume from a checkpoint. A checkpoint here also holds the value model's
  trained weights; a killed run restarts from the last complete one with the remaining
  episodes. Optimiser moments, the LR schedule and the data order start afresh (documented).
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cai import models
from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.policy.monitors import PromptIndex, rollout_monitors

VALUE_STATE = "value_state.safetensors"
TRAINER_STATE = "trainer_state.json"


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    episode: int


def last_complete_checkpoint(directory: Path) -> ResumePoint | None:
    """The newest `checkpoint-N` holding policy, value state and trainer state (written last)."""
    if not directory.is_dir():
        return None
    found = []
    for path in directory.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        if (path / TRAINER_STATE).is_file() and (path / VALUE_STATE).is_file():
            state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
            return ResumePoint(path, int(state.get("global_step", 0)), int(state.get("episode", 0)))
    return None


def save_value_state(value_model: Any, directory: Path, *, is_main: bool) -> None:
    """The value model's trained tensors (all of it, or LoRA + head), next to trl's policy checkpoint."""
    from safetensors.torch import save_file

    state = {name: p.detach().cpu().contiguous() for name, p in value_model.named_parameters() if p.requires_grad}
    if is_main:
        save_file(state, str(directory / VALUE_STATE))


def load_value_state(value_model: Any, directory: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(directory / VALUE_STATE))
    named = dict(value_model.named_parameters())
    expected = {name for name, p in named.items() if p.requires_grad}
    if set(state) != expected:
        differing = sorted(set(state) ^ expected)[:1]
        raise CaiError(f"{directory}: its value-model state does not match this run's model (e.g. {differing}); set force=true to start the ppo stage over")
    with torch.no_grad():
        for name, tensor in state.items():
            named[name].copy_(tensor)


# ---------------------------------------------------------------- the reward model as trl sees it


def reward_view(
    reward_backbone: Any,
    head: Any,
    config: Any,
    *,
    shared_adapter: Any | None,
    prompts: Sequence[Sequence[int]],
    eos_token_id: int,
    loop_penalty: float | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> Any:
    """The reward model for trl's `get_reward`, recording each scored rollout for the monitors.

    `shared_adapter` is the value model's LoRA backbone when reward and value share a base:
    the reward is then that backbone with the adapter disabled, and the frozen original head.
    A length-corrected reward model (`reward.length_correction`) is corrected here as everywhere.
    `ppo.loop_penalty` comes off a rollout that repeats itself: a reward model trained on few
    pairs can pay more for each repeated decline (measured on the demo's), a hack open to PPO.
    """
    import torch

    from cai.evaluation.metrics import loops
    from cai.reward.model import length_slope

    if loop_penalty and decode is None:
        raise ValueError("reward_view: a loop penalty needs `decode` to read the rollouts")

    slope = length_slope(config)  # reward.length_correction, fixed when the reward model was saved

    class RewardView(torch.nn.Module):
        base_model_prefix = "backbone"  # trl's get_reward calls getattr(model, base_model_prefix)

        def __init__(self) -> None:
            super().__init__()
            if shared_adapter is None:
                self.inner = reward_backbone  # registered: moved and frozen with the view
            else:
                object.__setattr__(self, "inner", reward_backbone)  # owned by the value model
            self.head = head
            self.config = config
            self.index = PromptIndex(prompts)
            self.pending: Any = None
            self.responses: list[list[int]] = []
            self.raw_scores: list[float] = []
            self.unmatched = 0
            self.looped = 0

        def adapter_disabled(self) -> Any:
            return shared_adapter.disable_adapter() if shared_adapter is not None else nullcontext()

        @property
        def backbone(self) -> Any:
            return self.recorded_backbone

        def recorded_backbone(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
            with self.adapter_disabled():
                output = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            self.pending = (input_ids.detach(), attention_mask.detach())
            return output

        def score(self, hidden: Any) -> Any:
            logits = self.head(hidden)
            if self.pending is not None:
                ids, mask = self.pending
                self.pending = None
                if slope or loop_penalty:
                    logits = logits.clone()
                for row in range(ids.shape[0]):
                    begin = self.record(ids[row].tolist(), mask[row].bool().tolist(), logits[row, :, 0])
                    if begin is None:
                        continue
                    if slope:  # reward.length_correction: each position scored as a response of that many tokens
                        tokens = torch.arange(1, logits.shape[1] - begin + 1, device=logits.device, dtype=logits.dtype)
                        logits[row, begin:, 0] -= slope * tokens
                    if loop_penalty and loops(decode(self.responses[-1])):  # trl reads the score at the rollout's end
                        logits[row, begin:, 0] -= loop_penalty
                        self.looped += 1
            return logits

        def record(self, ids: list[int], mask: list[bool], row_logits: Any) -> int | None:
            """Split one scored row as trl does: left pads, query, response up to the first pad, score at its end
            (less the length correction); returns where the response begins (None: no known query)."""
            start = mask.index(True) if True in mask else len(mask)
            length = self.index.query_length(ids[start:])
            if length is None:
                self.unmatched += 1
                return None
            begin = start + length
            end = mask.index(False, begin) if False in mask[begin:] else len(mask)
            self.responses.append(ids[begin:end])
            self.raw_scores.append(float(row_logits[end - 1]) - slope * (end - begin))
            return begin

        def forward(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
            """Pooled score at the last attended token (right padding), for direct scoring."""
            with self.adapter_disabled():
                hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            logits = self.head(hidden)
            last = (attention_mask.long() * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(1)
            return _Scores(logits[torch.arange(logits.shape[0], device=logits.device), last])

        def drain(self, accelerator: Any) -> dict[str, float]:
            """The monitors over everything scored since the last call, gathered from all processes."""
            from accelerate.utils import gather_object

            local = [(self.responses, self.raw_scores, self.unmatched, self.looped)]
            self.responses, self.raw_scores, self.unmatched, self.looped = [], [], 0, 0
            parts = gather_object(local) if accelerator.num_processes > 1 else local
            responses = [r for part in parts for r in part[0]]
            scores = [s for part in parts for s in part[1]]
            monitors = rollout_monitors(responses, eos_token_id, scores)
            if loop_penalty and responses:
                monitors["monitor/loop_penalized"] = sum(part[3] for part in parts) / len(responses)
            unmatched = sum(part[2] for part in parts)
            if unmatched:
                monitors["monitor/unmatched_rollouts"] = float(unmatched)
            return monitors

    return RewardView()


@dataclass
class _Scores:
    logits: Any


# ---------------------------------------------------------------- trainer


def ppo_trainer_class() -> type:
    """trl's PPOTrainer plus its overridable hooks: `log` (monitors), `save_model` (value state), model card."""
    from cai.policy.availability import import_ppo

    PPOTrainer = import_ppo().PPOTrainer

    class MonitoredPPOTrainer(PPOTrainer):
        monitor: Any = None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.monitor is not None and "objective/scores" in logs:
                logs.update(self.monitor.drain(self.accelerator))
            super().log(logs, start_time)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            """The policy alone (trl's own swap misses it behind DDP and saves policy+value), plus value state."""
            output_dir = output_dir or self.args.output_dir
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # sharded weights: trl gathers them
                super().save_model(output_dir, _internal_call)
            elif self.args.should_save:
                unwrapped.policy.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
            if _internal_call:  # a checkpoint: keep the value model with the policy
                save_value_state(unwrapped.value_model, Path(output_dir), is_main=self.args.should_save)

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            """trl reads `self.model.config`, which DDP hides; read it from the unwrapped model."""
            wrapped = self.model
            self.model = self.accelerator.unwrap_model(wrapped)
            try:
                super().create_model_card(*args, **kwargs)
            finally:
                self.model = wrapped

    return MonitoredPPOTrainer


def resume_offset_callback(point: ResumePoint, total_steps: int) -> Any:
    """trl's PPO restarts its counters at 0; continue them so logs and checkpoint names follow on."""
    from transformers import TrainerCallback

    class ResumeOffset(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            state.global_step = point.step
            state.episode = point.episode
            state.max_steps = total_steps

    return ResumeOffset()


@dataclass
class PPOSession:
    """What the stage needs from a built PPO run."""

    trainer: Any
    reward: Any  # the RewardView: scores (prompt, response) ids directly too
    total_steps: int
    total_episodes: int
    remaining_episodes: int
    resume: ResumePoint | None
    step0: dict[str, float]

    @contextmanager
    def sl_policy(self) -> Iterator[Any]:
        """A model equal to the SL policy: the reference, or the LoRA policy with its adapter disabled."""
        trainer = self.trainer
        if trainer.ref_model is not None:
            yield trainer.ref_model
            return
        with trainer.null_ref_context():
            yield trainer.accelerator.unwrap_model(trainer.model).policy

    def policy(self) -> Any:
        return self.trainer.accelerator.unwrap_model(self.trainer.model).policy

    def train(self) -> None:
        if self.remaining_episodes > 0:
            self.trainer.train()
        elif self.resume is not None:  # killed after its last step, before the final save
            self.trainer.state.global_step = self.resume.step


def episode_budget(config: RLRunConfig, dataset_size: int, batch_size: int) -> int:
    """Episodes (rollouts) to train on: ppo.total_episodes, else training.max_steps batches, else epochs."""
    if config.ppo.total_episodes is not None:
        if config.ppo.total_episodes < 1:
            raise CaiError(f"ppo.total_episodes: must be at least 1, got {config.ppo.total_episodes}")
        return config.ppo.total_episodes
    if config.training.max_steps > 0:
        return config.training.max_steps * batch_size
    return max(1, int(config.training.num_train_epochs * dataset_size))


def check_batch_settings(config: RLRunConfig, prompts: int, world_size: int) -> int:
    """trl asserts or loops forever on these; say which setting to change instead. Returns the global batch."""
    local = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
    if config.ppo.num_mini_batches < 1 or local % config.ppo.num_mini_batches:
        raise CaiError(f"ppo.num_mini_batches: {config.ppo.num_mini_batches} does not divide the per-process batch of {local} (training.per_device_train_batch_size x gradient_accumulation_steps); choose a divisor")
    if config.ppo.whiten_rewards and local // config.ppo.num_mini_batches < 8:
        raise CaiError(f"ppo.whiten_rewards: needs at least 8 rollouts per mini-batch, got {local // config.ppo.num_mini_batches}; raise training.per_device_train_batch_size or set ppo.whiten_rewards=false")
    if config.ppo.missing_eos_penalty is not None and config.ppo.missing_eos_penalty < 0:
        raise CaiError(f"ppo.missing_eos_penalty: must be positive (it is subtracted), got {config.ppo.missing_eos_penalty}")
    if prompts < local * world_size:
        raise CaiError(f"prompts: {prompts} prompts cannot fill one PPO batch of {local * world_size} (per-device batch x accumulation x processes); add prompts or lower training.per_device_train_batch_size")
    return local * world_size


def build_ppo(
    config: RLRunConfig,
    accelerator: Any,
    *,
    tokenizer: Any,
    policy_ref: models.ModelRef,
    reward_ref: models.ModelRef,
    query_ids: list[list[int]],
    checkpoints: Path,
    callbacks: list[Any],
) -> PPOSession:
    """Load the four roles, build trl's trainer (resuming from a checkpoint if one is complete), check step 0."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from cai.policy.availability import import_ppo
    from cai.policy.invariants import check_step0

    PPOConfig = import_ppo().PPOConfig  # one line, not a traceback, on a trl without PPO
    from cai.reward.model import load_reward_base
    from cai.training import trainer_config

    batch = check_batch_settings(config, len(query_ids), accelerator.num_processes)
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    if config.lora.enabled and accelerator.num_processes > 1 and not deepspeed:
        raise CaiError(
            "lora.enabled: trl's PPOTrainer reaches the LoRA policy (and its disabled-adapter reference) as model.policy, "
            "which the DDP wrapper hides with several processes (trl issue #2375); use a DeepSpeed accelerate config, "
            "one process, or lora.enabled=false"
        )
    total = episode_budget(config, len(query_ids), batch)
    total_steps = math.ceil(total / batch)
    resume = last_complete_checkpoint(checkpoints)
    remaining = total - (resume.episode if resume else 0)
    lora = config.lora.enabled
    stop_id = models.end_of_turn_id(tokenizer)  # where a response ends: `<|im_end|>`, `<end_of_turn>`, ..., else EOS

    # Policy and value train as fp32 masters (the trainer autocasts to bf16); the reference holds the
    # policy's dtype so ratio and KL start at 1 and 0; the frozen reward model may stay bf16.
    if resume and not lora:  # the checkpoint holds the whole policy
        policy = models.load_causal_lm(models.resolve(str(resume.path), setting="checkpoint"), trainable=True)
    else:
        policy = models.load_causal_lm(policy_ref, trainable=True)
    if resume and lora:  # the checkpoint holds the adapter on the SL base
        from peft import PeftModel

        policy = PeftModel.from_pretrained(policy, str(resume.path), is_trainable=True)
    models.sync_pad_token(policy, tokenizer)
    reference = None if lora else models.load_causal_lm(policy_ref, dtype=models.trainable_dtype()).requires_grad_(False)
    if reference is not None:
        models.sync_pad_token(reference, tokenizer)

    value = load_reward_base(reward_ref, trainable=True, setting="reward_model")
    value.config.pad_token_id = tokenizer.pad_token_id
    share = lora and not deepspeed  # DeepSpeed prepares the reward model as its own engine
    loop_check = {"loop_penalty": config.ppo.loop_penalty, "decode": lambda ids: tokenizer.decode(ids, skip_special_tokens=True)}
    if share:
        import copy

        from peft import get_peft_model

        head = copy.deepcopy(value.score).requires_grad_(False)
        backbone = get_peft_model(getattr(value, value.base_model_prefix), models.lora_config(config.lora, task_type=None))
        setattr(value, value.base_model_prefix, backbone)
        reward = reward_view(backbone, head, value.config, shared_adapter=backbone, prompts=query_ids, eos_token_id=stop_id, **loop_check)
    else:
        frozen = load_reward_base(reward_ref, dtype=models.default_dtype(), setting="reward_model").requires_grad_(False).eval()
        frozen.config.pad_token_id = tokenizer.pad_token_id
        reward = reward_view(getattr(frozen, frozen.base_model_prefix), frozen.score, frozen.config, shared_adapter=None, prompts=query_ids, eos_token_id=stop_id, **loop_check)
    if resume:
        load_value_state(value, resume.path)

    ppo = config.ppo
    args = trainer_config(
        PPOConfig,
        config.training,
        section="training",
        output_dir=checkpoints,
        seed=config.seed,
        kl_coef=ppo.kl_coef,
        response_length=ppo.response_length,
        temperature=ppo.temperature,
        missing_eos_penalty=ppo.missing_eos_penalty,
        whiten_rewards=ppo.whiten_rewards,
        num_ppo_epochs=ppo.num_ppo_epochs,
        num_mini_batches=ppo.num_mini_batches,
        local_rollout_forward_batch_size=ppo.local_rollout_forward_batch_size,
        cliprange=ppo.cliprange,
        vf_coef=ppo.vf_coef,
        total_episodes=max(remaining, 1),
        stop_token=None,
        stop_token_id=stop_id,  # truncate at the first end of turn and pad after it, so the reward is read there
        num_sample_generations=0,
        sft_model_path=policy_ref.path,
        reward_model_path=reward_ref.path,
    )
    if resume:
        callbacks = [*callbacks, resume_offset_callback(resume, total_steps)]
    trainer = ppo_trainer_class()(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        train_dataset=Dataset.from_dict({"input_ids": query_ids}),
        value_model=value,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
        peft_config=models.lora_config(config.lora) if lora and not resume else None,
    )
    trainer.monitor = reward
    step0: dict[str, float] = {}
    if not resume:  # a resumed policy has moved away from the reference by design
        queries = trainer.data_collator([{"input_ids": ids} for ids in query_ids[: min(8, len(query_ids))]])["input_ids"]
        unwrapped = accelerator.unwrap_model(trainer.model).policy
        step0 = check_step0(
            unwrapped,
            trainer.ref_model if trainer.ref_model is not None else unwrapped,
            queries,
            pad_token_id=tokenizer.pad_token_id,
            stop_token_id=trainer.stop_token_id,
            temperature=ppo.temperature,
            response_length=ppo.response_length,
            tolerance=ppo.step0_tolerance,
            reference_context=trainer.null_ref_context if trainer.ref_model is None else None,
            autocast=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,  # as the trainer runs
        )
    return PPOSession(trainer, reward, total_steps, total, remaining, resume, step0)
