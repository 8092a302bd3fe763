"""The stage registry: for each pipeline, its stages in order, the artefacts each owns and its function.

A stage is a plain function of (config, run store, accelerator, constitution) that lives in
its package; this table is the one place that names it. The launcher runs stages from here,
the config defaults and the `stages=` check read the names from here, and `force=true`
sets aside exactly the artefacts listed here (renamed, never deleted). Stage modules are
imported only when their stage runs, so `python -m cai validate` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cai import layout


@dataclass(frozen=True)
class Stage:
    name: str
    owns: tuple[str, ...]  # paths in the run directory (cai/layout.py)
    run: Callable[[Any, Any, Any, Any], None]  # (config, store, accelerator, constitution)
    doc: str


def _generate(config, store, accelerator, constitution) -> None:
    from cai.supervised.stages import run_generate

    run_generate(config, store, accelerator, constitution)


def _sft(config, store, accelerator, constitution) -> None:
    from cai.supervised.stages import run_sft

    run_sft(config, store, accelerator)


def _sample(config, store, accelerator, constitution) -> None:
    from cai.feedback.sample import run_sample

    run_sample(config, store, accelerator, constitution)


def _label(config, store, accelerator, constitution) -> None:
    from cai.feedback.label import run_label

    run_label(config, store, accelerator, constitution)


def _reward(config, store, accelerator, constitution) -> None:
    from cai.reward.stage import run_reward

    run_reward(config, store, accelerator)


def _policy(config, store, accelerator, constitution) -> None:
    from cai.policy.stage import run_policy

    run_policy(config, store, accelerator)


def _eval(config, store, accelerator, constitution) -> None:
    from cai.evaluation.stage import run_eval

    run_eval(config, store, accelerator, constitution)


def _eval_command(config, store, accelerator, constitution) -> None:
    """`python -m cai eval`: errors name its flags, and held-out prompts are not checked against training ones."""
    from cai.evaluation.stage import CLI_NAMES, run_eval

    run_eval(config, store, accelerator, constitution, tag="eval", names=CLI_NAMES, check_overlap=False)


def _grow(config, store, accelerator, constitution) -> None:
    from cai.self_instruct.pool import run_grow

    run_grow(config, store, accelerator)


def _legacy(stage: str, *paths: str) -> tuple[str, ...]:
    """The same artefacts under the stage's pre-rename name, so `force` sets those aside too."""
    return tuple(path.replace(stage, old) for old in layout.legacy_names(stage) for path in paths)


_POLICY_OWNS = (layout.checkpoints("policy"), layout.log("policy"))

PIPELINES: dict[str, tuple[Stage, ...]] = {
    "sl": (
        Stage("generate", (layout.SL_DATA, layout.SL_REJECTED, layout.SL_DATA_CARD), _generate, "responses to red-team prompts, critiqued and revised under the constitution"),
        Stage("sft", (layout.SL_MODEL, layout.SFT_DATA, layout.checkpoints("sft"), layout.log("sft")), _sft, "supervised fine-tuning on the revisions -> sl_model"),
    ),
    "rl": (
        Stage("sample", (layout.PAIRS,), _sample, "response pairs from the SL model"),
        Stage("label", (layout.PREFERENCES, layout.LABEL_GOLD), _label, "AI-feedback preference labels on the pairs"),
        Stage("reward", (layout.REWARD_MODEL, layout.checkpoints("reward"), layout.log("reward")), _reward, "a reward model trained on the labels"),
        Stage("policy", (layout.RL_MODEL, *_POLICY_OWNS, *_legacy("policy", *_POLICY_OWNS)), _policy, "the policy optimised with rl.algorithm (ppo, dpo, grpo or rloo) -> rl_model"),
        Stage("eval", (layout.EVAL, layout.REPORT), _eval, "held-out scores, Elo, refusal rates, then the report"),
    ),
    # `python -m cai eval`: the RL pipeline's eval stage alone, on any models
    "eval": (Stage("eval", (layout.EVAL, layout.REPORT), _eval_command, "held-out scores, Elo, refusal rates, then the report"),),
    "grow": (Stage("grow", (layout.ROUNDS, *layout.POOL_FILES.values()), _grow, "Self-Instruct prompt pools grown from seeds"),),
}


def pipeline(name: str) -> tuple[Stage, ...]:
    return PIPELINES[name]


def stage_names(name: str) -> list[str]:
    return [stage.name for stage in PIPELINES[name]]


def owned(name: str, stage: str) -> tuple[str, ...]:
    return next(s.owns for s in PIPELINES[name] if s.name == stage)
