"""The non-PPO choices of `rl.algorithm`: DPO on the AI labels, GRPO and RLOO on the reward model.

None of these is the paper's method (it used PPO); they are trl's maintained trainers, run
as they are, and the stage writes the same outputs for them. Departures, and why:
- GRPO/RLOO score with a reward *function* that rebuilds `chat_format.scored_ids` (template
  up to the assistant header + response + one EOS). Handing trl the reward model directly
  would render the whole conversation with the chat template, which ends the assistant turn
  with a newline after EOS, so the score would be read one token past where it was trained.
- The missing-EOS penalty (`ppo.missing_eos_penalty`) and the KL coefficient (`ppo.kl_coef`)
  carry over, so switching algorithm does not silently change the objective's shape.
- DPO uses hard labels: each pair is oriented so the more likely response is `chosen`, and
  exact ties (p_chosen = 0.5) are dropped; the soft probabilities are not used by DPO's loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cai import models
from cai.chat_format import prompt_ids
from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.policy.monitors import rollout_monitors


def dpo_records(records: list[dict[str, Any]], *, where: str) -> tuple[list[dict[str, Any]], int]:
    """Label-stage records as trl's conversational explicit-prompt rows, oriented; ties dropped."""
    from cai.reward.model import comparison_from_record, orient

    rows, ties = [], 0
    for i, record in enumerate(records):
        comparison = orient(comparison_from_record(record, where=f"{where} record {record.get('id', i)!r}", source="ai"))
        if comparison.p_chosen == 0.5:
            ties += 1
            continue
        rows.append(
            {
                "prompt": [{"role": "user", "content": comparison.prompt}],
                "chosen": [{"role": "assistant", "content": comparison.chosen}],
                "rejected": [{"role": "assistant", "content": comparison.rejected}],
            }
        )
    return rows, ties


def reward_function(reward_model: Any, tokenizer: Any, *, missing_eos_penalty: float | None, loop_penalty: float | None = None, max_length: int, batch_size: int) -> Callable[..., list[float]]:
    """cai's reward function for trl (cai/reward/function.py), with the rollout monitors logged through trl's `log_metric`."""
    from cai.reward.function import ConstitutionalReward

    return ConstitutionalReward(reward_model, tokenizer, missing_eos_penalty=missing_eos_penalty, loop_penalty=loop_penalty, max_length=max_length, batch_size=batch_size, monitor=rollout_monitors)


def build_dpo(config: RLRunConfig, *, tokenizer: Any, policy_ref: models.ModelRef, rows: list[dict[str, Any]], checkpoints: Path, callbacks: list[Any]) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cai.training import trainer_config

    if not rows:
        raise CaiError("preferences: no pair with a winner to train DPO on (all ties or none); check the label stage or use rl.algorithm=ppo")
    limit = config.training.max_length  # trl drops a pair whose prompt alone fills max_length
    if not any(len(prompt_ids(tokenizer, row["prompt"][0]["content"])) < limit for row in rows):
        raise CaiError(f"training.max_length: every DPO pair's prompt fills training.max_length={limit} tokens, so trl would drop them all; raise training.max_length")
    args = trainer_config(DPOConfig, config.training, section="training", output_dir=checkpoints, seed=config.seed, beta=config.dpo.beta)
    model = models.load_causal_lm(policy_ref, trainable=True)
    models.sync_pad_token(model, tokenizer)
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=models.lora_config(config.lora) if config.lora.enabled else None,
    )


def build_online(algorithm: str, config: RLRunConfig, *, tokenizer: Any, policy_ref: models.ModelRef, prompts: list[str], reward_model: Any, checkpoints: Path, callbacks: list[Any]) -> Any:
    """GRPO or RLOO from trl, with `<algorithm>.num_generations` samples per prompt scored by the reward model."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from cai.training import trainer_config

    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[algorithm]
    settings = getattr(config, algorithm)  # grpo.* or rloo.*; at least 2 generations is checked at load
    args = trainer_config(
        config_cls,
        config.training,
        section="training",
        output_dir=checkpoints,
        seed=config.seed,
        beta=settings.kl_coef,
        num_generations=settings.num_generations,
        max_completion_length=settings.response_length,
        temperature=settings.temperature,
        top_p=1.0,
        log_completions=False,
    )
    model = models.load_causal_lm(policy_ref, trainable=True)
    models.sync_pad_token(model, tokenizer)
    score = reward_function(reward_model, tokenizer, missing_eos_penalty=settings.missing_eos_penalty, loop_penalty=settings.loop_penalty, max_length=config.training.max_length, batch_size=settings.reward_batch_size)
    return trainer_cls(
        model=model,
        reward_funcs=score,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts]),
        processing_class=models.with_end_of_turn_as_eos(tokenizer),  # trl stops and masks at eos_token_id only
        callbacks=callbacks,
        peft_config=models.lora_config(config.lora) if config.lora.enabled else None,
    )
