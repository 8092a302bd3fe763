"""The `policy` stage (called `ppo` before it ran other algorithms): optimise the SL policy against the constitution's reward model.

`rl.algorithm` picks the optimiser: `ppo` (the paper's method, trl's experimental
PPOTrainer; see cai/policy/ppo.py), or trl's maintained `dpo`, `grpo` and `rloo` (see
cai/policy/alternatives.py). Whatever the choice, the stage writes `rl_model/` (policy +
tokenizer), `logs/policy.jsonl`, and a manifest entry with the algorithm, the key metrics and
the mean reward of greedy responses on a fixed prompt subset before and after training.

Departures from the paper, and why: the paper mixes in human helpfulness prompts; here they
are optional (`prompts.helpful`, set in the shipped configs). The before/after reward is
measured on greedy responses to held-out prompts (the first of `eval.red_team`, `eval.helpful`
and `eval.benign`, minus any that also appear among the training prompts), scored on
`chat_format.scored_ids`: a fixed and cheap yardstick rather than the paper's Elo evaluations
(those are the eval stage's job). It is still the reward model being optimised, so a rise
says the policy learnt what the reward model wants, not that the reward model is right (its
gold accuracy, in the reward stage's manifest entry, says that).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cai import layout, models
from cai.chat_format import prompt_ids, prompt_text, response_ids, scored_ids
from cai.config import RLRunConfig
from cai.errors import CaiError
from cai.fingerprint import files_stamp
from cai.fingerprint import fingerprint as content_fingerprint
from cai.layout import PREFERENCES, REWARD_MODEL, RL_MODEL, policy_reference
from cai.run_store import RunStore, check_same_inputs
from cai.supervised.stages import select_prompts
from cai.training import (
    fresh_staging,
    jsonl_log_callback,
    last_checkpoint,
    no_final_checkpoint_callback,
    replace_directory,
)

NEEDS_REWARD_MODEL = ("ppo", "grpo", "rloo")
STAGE = "policy"
RESUMABLE_TRAINING = ("logging_steps", "save_steps", "save_total_limit", "report_to")  # no effect on the weights
RUN_SUMMARY = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


def reward_model_ref(store: RunStore, algorithm: str, *, required: bool) -> models.ModelRef | None:
    """This run's trained reward model, or an error telling the user to run the reward stage."""
    path = store.root / REWARD_MODEL
    if store.stage_done("reward") and path.is_dir():
        return models.resolve(str(path), setting="reward_model")
    if required:
        raise CaiError(f"{path}: no trained reward model (stage 'reward' has not finished); rl.algorithm={algorithm} scores the policy with it, so run stages=reward first (e.g. stages=reward,policy)")
    return None


def policy_fingerprint(config: RLRunConfig, *, policy_ref: models.ModelRef, reward_ref: models.ModelRef | None, prompts: list[str], pairs: list[dict[str, Any]]) -> str:
    """Everything the trained policy depends on: the SL model and reward model (their saved files),
    the algorithm and its settings, training and LoRA settings, prompts (or DPO pairs) and seed.
    Logging and checkpoint cadence are left out: changing them may resume."""
    algorithm = config.rl.algorithm
    training = {k: v for k, v in dataclasses.asdict(config.training).items() if k not in RESUMABLE_TRAINING}
    return content_fingerprint(
        {
            "algorithm": algorithm,
            "settings": dataclasses.asdict(getattr(config, algorithm)),
            "training": training,
            "lora": dataclasses.asdict(config.lora),
            "seed": config.seed,
            "prompts": prompts,
            "pairs": pairs,
            "policy": [policy_ref.path, policy_ref.gguf_file, files_stamp(policy_ref.path)],
            "reward": [reward_ref.path, files_stamp(reward_ref.path)] if reward_ref is not None else None,
        },
        sort_keys=True,
        ensure_ascii=False,
    )


def run_policy(config: RLRunConfig, store: RunStore, accelerator: Any) -> None:
    """Train the policy with `rl.algorithm`, report mean reward before and after, save `rl_model/`."""
    from transformers import set_seed

    from cai.reward.model import check_padding, check_same_tokenizer

    algorithm = config.rl.algorithm  # one of config.Algorithm, checked at load
    if algorithm == "ppo":
        from cai.policy.availability import ppo_problem

        if problem := ppo_problem():  # also refused at config load; this covers a config built in code
            raise CaiError(problem)
    reward_ref = reward_model_ref(store, algorithm, required=algorithm in NEEDS_REWARD_MODEL)
    pairs: list[dict[str, Any]] = []
    if algorithm == "dpo":
        from cai.policy.alternatives import dpo_records

        records = store.require_stage("label", needed_by=STAGE, records=PREFERENCES)
        pairs, _ = dpo_records(records, where=str(store.stage_dir(PREFERENCES)))
    policy_ref = models.resolve(policy_reference(config), setting="model")
    tokenizer = models.load_tokenizer(policy_ref, padding_side="left")
    check_padding(tokenizer, setting="model")
    if reward_ref is not None:
        check_same_tokenizer(tokenizer, models.load_tokenizer(reward_ref), policy_name=policy_ref.name, reward_name=reward_ref.name, setting="reward_model")
    if config.lora.enabled and not config.lora.merge and policy_ref.is_adapter:
        raise CaiError(f"lora.merge: the SL model {policy_ref.name} is itself a LoRA adapter (merged before RL), so an RL adapter saved on its own would sit on the wrong base; set lora.merge=true")
    prompts, queries = usable_prompts(config, tokenizer)
    eval_prompts = held_out_reward_prompts(config.eval, training=prompts, per_set=config.rl.reward_check_prompts) if config.rl.reward_check_prompts else []
    checkpoints = layout.existing(store.root, layout.checkpoints(STAGE), STAGE)  # an older run: checkpoints/ppo
    inputs = policy_fingerprint(config, policy_ref=policy_ref, reward_ref=reward_ref, prompts=prompts, pairs=pairs)
    check_same_inputs(store, stage=STAGE, records_dir=STAGE, fingerprint=inputs, checkpoints=checkpoints)
    store.mark_stage(STAGE, "running", algorithm=algorithm, prompts=len(prompts))
    set_seed(config.seed)

    run = build_run(
        algorithm,
        config,
        accelerator,
        tokenizer=tokenizer,
        policy_ref=policy_ref,
        reward_ref=reward_ref,
        prompts=prompts,
        queries=queries,
        pairs=pairs,
        checkpoints=checkpoints,
        callbacks=[jsonl_log_callback(layout.existing(store.root, layout.log(STAGE), STAGE), stage=STAGE), no_final_checkpoint_callback()],
    )
    if run.resume and accelerator.is_main_process:
        print(f"[rl] policy: resuming from {run.resume}{run.resume_detail}")
    before = store.stage_info(STAGE).get("reward_before") if run.resume else None
    if before is None and run.scorer is not None and eval_prompts:
        with run.sl_policy() as sl_model:
            before = mean_reward(sl_model, tokenizer, eval_prompts, run.scorer, config, accelerator)
    store.mark_stage(STAGE, "running", reward_before=before, **run.step0)
    if accelerator.is_main_process:
        if run.step0:
            print(f"[rl] policy: step-0 check passed (ratio gap {run.step0['step0/ratio_gap']:.1e}, reference gap {run.step0['step0/reference_gap']:.1e}, KL {run.step0['step0/kl']:.1e})")
        if before is not None:
            print(f"[rl] policy: mean reward before training {before:.4f} ({len(eval_prompts)} held-out prompts from eval.*, none trained on; greedy)")
        elif run.scorer is not None and not eval_prompts:
            print("[rl] policy: no reward check before and after training (rl.reward_check_prompts=0); the eval stage scores every model on the held-out prompts")

    run.train()
    trainer = run.trainer
    after = mean_reward(run.policy(), tokenizer, eval_prompts, run.scorer, config, accelerator) if run.scorer is not None and eval_prompts else None
    save_final_policy(trainer, tokenizer, store.root / RL_MODEL, lora=config.lora, accelerator=accelerator)
    metrics = final_metrics(trainer.state.log_history)
    summary = {
        "algorithm": algorithm,
        "steps": trainer.state.global_step,
        "prompts": len(prompts),
        "eval_prompts": len(eval_prompts),
        "reward_before": before,
        "reward_after": after,
        "lora": config.lora.enabled,
        "resumed_from": str(run.resume) if run.resume else None,
        "metrics": metrics,
        **({"pairs": len(pairs)} if algorithm == "dpo" else {}),
    }
    store.mark_stage(STAGE, "done", **summary)
    store.update_manifest(lambda m: m.setdefault("models", {}).update({"rl_model": str(store.root / RL_MODEL)}))
    if accelerator.is_main_process:
        if after is not None and before is not None:
            print(f"[rl] policy: mean reward after training {after:.4f} (before {before:.4f}, change {after - before:+.4f})")
        kl = metrics.get("objective/kl", metrics.get("kl"))
        print(f"[rl] policy: {algorithm}, {trainer.state.global_step} steps" + (f", KL {kl:.4f}" if kl is not None else "") + f" -> {store.root / RL_MODEL}")


@dataclass
class PolicyRun:
    """A built trainer of any algorithm, with what the stage asks of it."""

    trainer: Any
    scorer: Any  # the reward model (or PPO's view of it), None for DPO without one
    resume: Any = None
    session: Any = None  # the PPOSession for ppo
    accelerator: Any = None

    @property
    def step0(self) -> dict[str, float]:
        return self.session.step0 if self.session is not None else {}

    @property
    def resume_detail(self) -> str:
        if self.session is None or self.session.resume is None:
            return ""
        s = self.session
        return f" (step {s.resume.step} of {s.total_steps}, {s.remaining_episodes} episodes left; policy and value weights restored, optimiser state and LR schedule start afresh)"

    @contextmanager
    def sl_policy(self) -> Iterator[Any]:
        """A model equal to the SL policy (before any training step of this run)."""
        if self.session is not None:
            with self.session.sl_policy() as model:
                yield model
        else:
            yield self.policy()

    def policy(self) -> Any:
        return self.session.policy() if self.session is not None else self.accelerator.unwrap_model(self.trainer.model)

    def train(self) -> None:
        if self.session is not None:
            self.session.train()
        else:
            self.trainer.train(resume_from_checkpoint=self.resume)


def build_run(
    algorithm: str,
    config: RLRunConfig,
    accelerator: Any,
    *,
    tokenizer: Any,
    policy_ref: models.ModelRef,
    reward_ref: models.ModelRef | None,
    prompts: list[str],
    queries: list[list[int]],
    pairs: list[dict[str, Any]],
    checkpoints: Path,
    callbacks: list[Any],
) -> PolicyRun:
    if algorithm == "ppo":
        from cai.policy.ppo import build_ppo

        session = build_ppo(config, accelerator, tokenizer=tokenizer, policy_ref=policy_ref, reward_ref=reward_ref, query_ids=queries, checkpoints=checkpoints, callbacks=callbacks)
        return PolicyRun(session.trainer, session.reward, session.resume.path if session.resume else None, session, accelerator)
    from cai.policy.alternatives import build_dpo, build_online

    scorer = load_frozen_reward(reward_ref, tokenizer, accelerator) if reward_ref is not None else None
    if algorithm == "dpo":
        trainer = build_dpo(config, tokenizer=tokenizer, policy_ref=policy_ref, rows=pairs, checkpoints=checkpoints, callbacks=callbacks)
    else:
        trainer = build_online(algorithm, config, tokenizer=tokenizer, policy_ref=policy_ref, prompts=prompts, reward_model=scorer, checkpoints=checkpoints, callbacks=callbacks)
    return PolicyRun(trainer, scorer, last_checkpoint(checkpoints), None, accelerator)


def usable_prompts(config: RLRunConfig, tokenizer: Any) -> tuple[list[str], list[list[int]]]:
    """Prompt texts and their query ids (`chat_format.prompt_ids`), dropping those over generation.max_prompt_length."""
    selected = [p.prompt for p in select_prompts(config.prompts, config.seed)]
    limit = config.generation.max_prompt_length
    kept = [(text, ids) for text in selected if (ids := prompt_ids(tokenizer, text)) and (not limit or len(ids) <= limit)]
    if not kept:
        raise CaiError(f"prompts: every prompt is longer than generation.max_prompt_length={limit} tokens; raise it")
    if len(kept) < len(selected):
        print(f"[rl] policy: {len(selected) - len(kept)} prompts longer than generation.max_prompt_length={limit} tokens left out")
    return [text for text, _ in kept], [ids for _, ids in kept]


def load_frozen_reward(reward_ref: models.ModelRef, tokenizer: Any, accelerator: Any) -> Any:
    from cai.reward.model import load_reward_base

    model = load_reward_base(reward_ref, dtype=models.default_dtype(), setting="reward_model")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.requires_grad_(False).eval().to(accelerator.device)


def held_out_reward_prompts(settings: Any, *, training: list[str], per_set: int) -> list[str]:
    """The first `per_set` prompts of each held-out eval set (`eval.red_team`, `eval.helpful`, `eval.benign`), none of them a training prompt."""
    from cai.prompt_sources import load_prompts

    seen = {" ".join(p.split()).lower() for p in training}
    chosen: list[str] = []
    sources = [("red_team", settings.red_team, "eval.red_team"), ("helpful", settings.helpful, "eval.helpful"), ("helpful", getattr(settings, "benign", None), "eval.benign")]
    for kind, source, setting in sources:
        if not source:
            continue
        fresh = [p.prompt for p in load_prompts(source, kind=kind, shuffle=False, setting=setting) if " ".join(p.prompt.split()).lower() not in seen]
        chosen += fresh[:per_set]
    if not chosen:
        raise CaiError("eval.red_team: no held-out prompt left to measure the reward before and after training (all are training prompts); point eval.red_team at prompts the policy does not train on")
    return chosen


def mean_reward(model: Any, tokenizer: Any, prompts: list[str], scorer: Any, config: RLRunConfig, accelerator: Any) -> float:
    """Mean reward of the model's greedy responses, scored on `chat_format.scored_ids`."""
    from cai.generation import TransformersGenerator, generate_sharded
    from cai.reward.model import reward_scores_sharded

    settings = dataclasses.replace(config.generation, backend="transformers", temperature=0.0, max_new_tokens=getattr(config, config.rl.algorithm, config.ppo).__dict__.get("response_length", config.ppo.response_length))
    generator = TransformersGenerator(model, tokenizer, settings, seed=config.seed, show_progress=False)
    texts = generate_sharded(generator, [prompt_text(tokenizer, p) for p in prompts], accelerator, desc="reward eval")
    ids = [scored_ids(tokenizer, p, t, max_length=config.training.max_length) for p, t in zip(prompts, texts, strict=True)]
    lengths = [len(response_ids(tokenizer, t)) for t in texts]
    scores = reward_scores_sharded(scorer, ids, pad_token_id=tokenizer.pad_token_id, batch_size=config.generation.batch_size, accelerator=accelerator, response_lengths=lengths)
    return sum(scores) / len(scores)


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged training metrics, without the end-of-training summary, as plain numbers."""
    for entry in reversed(history):
        numbers = {k: float(v) for k, v in entry.items() if k not in RUN_SUMMARY and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if set(numbers) - {"epoch", "step"}:
            return numbers
    return {}


def save_final_policy(trainer: Any, tokenizer: Any, destination: Path, *, lora: Any, accelerator: Any) -> None:
    """The policy (LoRA merged when lora.merge) and tokenizer, staged then moved into place."""
    from accelerate.utils import is_peft_model

    staging = fresh_staging(destination) if accelerator.is_main_process else destination
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(trainer.model)
    model = getattr(model, "policy", model)  # trl's PPO wraps policy and value together
    if is_peft_model(model) and lora.merge:
        merged = model.merge_and_unload()
        if accelerator.is_main_process:
            merged.save_pretrained(staging)
    else:
        trainer.save_model(str(staging))  # trl's PPO saves only the policy
    if accelerator.is_main_process:
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(staging)
        replace_directory(staging, destination)
    accelerator.wait_for_everyone()
