"""Typed, strict run configs: one YAML per launch plus dotted `key=value` overrides.

Every setting has one name everywhere (YAML, override, error message, docs). Unknown keys
are errors that suggest the closest valid key, and all problems in a file are reported
together, unlike trl's parser which drops unknown YAML keys silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cai.errors import CaiError

T = TypeVar("T")


# ---------------------------------------------------------------- sections shared by stages


@dataclass
class PromptsConfig:
    """Where red-team and helpful prompts come from: a JSONL/JSON/CSV/Parquet file or a hub dataset."""

    red_team: str = "examples/red_team.jsonl"
    red_team_column: str = "prompt"
    helpful: str | None = "examples/helpful.jsonl"
    helpful_column: str = "prompt"
    split: str = "train"
    max_red_team: int | None = None
    max_helpful: int | None = None
    shuffle: bool = True


@dataclass
class GenerationConfig:
    """Decoding settings shared by every stage that generates text."""

    backend: str = "transformers"
    batch_size: int = 16
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    max_prompt_length: int = 2048
    vllm_gpu_memory_utilization: float = 0.5


@dataclass
class LoraConfig:
    """peft LoRA as a switch: the same code trains full weights when `enabled` is false."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    merge: bool = True


@dataclass
class TrainingConfig:
    """The trainer settings users touch most; anything else of trl's config goes in `extra`."""

    learning_rate: float = 1e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    logging_steps: int = 5
    save_steps: int = 200
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- SL-CAI


@dataclass
class SLConfig:
    """Critique-revision settings; the paper's values are 4 rounds, a principle per round, 5 demos."""

    critique_model: str | None = None
    revision_rounds: int = 1
    principle_per_round: bool = True
    few_shot: int = 5
    train_on_all_rounds: bool = False
    helpful_per_red_team: float = 1.0
    chunk_size: int = 32
    show_examples: int = 3


@dataclass
class SLRunConfig:
    """`cai/sl.py`: generate critique-revision data, then supervised fine-tuning."""

    output_dir: str = "runs/sl"
    constitution: str = "constitutions/default.yaml"
    model: str = "embedded"
    stages: list[str] = field(default_factory=lambda: ["generate", "sft"])
    seed: int = 0
    force: bool = False
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sl: SLConfig = field(default_factory=SLConfig)
    sft: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


# ---------------------------------------------------------------- loading


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read `path` (optional), apply dotted overrides, and build `cls`, reporting every problem at once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, what="config")
    for override in overrides:
        key, value = parse_override(override)
        set_dotted(raw, key, value)
    problems: list[str] = []
    config = _build(cls, raw, "", problems)
    if problems:
        raise CaiError(f"{source}: " + "; ".join(problems))
    return config


def read_yaml_mapping(path: str | Path, *, what: str) -> dict[str, Any]:
    """Safe-load a YAML file that must hold a mapping, with errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CaiError(f"{path}: {what} file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CaiError(f"{where}: malformed YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CaiError(f"{path}: {what} must be a YAML mapping of key: value, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3); values are YAML scalars or flow lists so types follow the dataclass."""
    if "=" not in text:
        raise CaiError(f"override {text!r}: expected key=value (e.g. generation.max_new_tokens=64)")
    key, _, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise CaiError(f"override {text!r}: empty key; write key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def set_dotted(mapping: dict[str, Any], key: str, value: Any) -> None:
    node = mapping
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config, so a run directory says exactly how it was made."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def closest(name: str, options: list[str]) -> str:
    """' (did you mean X?)' when a close option exists, else a list of the valid ones."""
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if match:
        return f"did you mean {match[0]!r}?"
    return "valid keys: " + ", ".join(options)


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            problems.append(f"unknown key {dotted!r} ({closest(str(key), names)})")
            continue
        values[key] = _coerce(hints[key], value, dotted, problems)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            values[key] = _onto_section_default(cls, key, value, dotted)  # problems already reported above
    return cls(**values)


def _onto_section_default(cls: type, key: str, raw: dict[str, Any], dotted: str) -> Any:
    """A partly overridden section keeps its parent's defaults (e.g. RL's training.learning_rate=1e-6), not the class's."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == key)
    if spec.default_factory is dataclasses.MISSING:
        return _build(typing.get_type_hints(cls)[key], raw, f"{dotted}.", [])
    base = spec.default_factory()
    built = _build(type(base), raw, f"{dotted}.", [])
    return dataclasses.replace(base, **{name: getattr(built, name) for name in raw if name in field_names(type(base))})


def _coerce(hint: Any, value: Any, dotted: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{dotted}.", problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for option in (a for a in args if a is not type(None)):
            attempt: list[str] = []
            result = _coerce(option, value, dotted, attempt)
            if not attempt:
                return result
            errors.extend(attempt)
        problems.append(errors[0] if errors else f"{dotted}: invalid value {value!r}")
        return None
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            problems.append(f"{dotted}: expected a list, got {value!r}")
            return []
        return [_coerce(args[0], item, dotted, problems) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{dotted}: expected a mapping, got {value!r}")
            return {}
        return value
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{dotted}: expected true or false, got {value!r}")
        return False
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{dotted}: expected an integer, got {value!r}")
        return 0
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{dotted}: expected a number, got {value!r}")
        return 0.0
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{dotted}: expected a string, got {value!r}")
        return ""
    return value


def check_choice(value: str, choices: typing.Iterable[str], setting: str) -> str:
    """A pluggable choice is a string checked against an explicit table."""
    choices = list(choices)
    if value not in choices:
        raise CaiError(f"{setting}: unknown choice {value!r}; valid choices: {', '.join(choices)}")
    return value


def check_stages(stages: list[str], known: list[str], setting: str = "stages") -> list[str]:
    """Validate a stage selection and return it in pipeline order."""
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise CaiError(f"{setting}: unknown stage {unknown[0]!r}; stages are {', '.join(known)}")
    if not stages:
        raise CaiError(f"{setting}: no stage selected; choose from {', '.join(known)}")
    return [s for s in known if s in stages]


def split_cli(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--config X k=v ... [--force]` -> (X, overrides); `--force` is sugar for `force=true`."""
    config: str | None = None
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise CaiError("--config: missing the YAML path; e.g. --config configs/sl.yaml")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--force":
            overrides.append("force=true")
        elif "=" in arg:
            overrides.append(arg[2:] if arg.startswith("--") else arg)
        else:
            raise CaiError(f"argument {arg!r}: expected --config PATH or key=value overrides")
        i += 1
    return config, overrides


# ---------------------------------------------------------------- RLAIF


@dataclass
class SampleConfig:
    """Response pairs from the SL model: several samples per prompt at a sampling temperature."""

    responses_per_prompt: int = 2
    temperature: float = 1.0
    chunk_size: int = 32


@dataclass
class FeedbackConfig:
    """The AI labeler: multiple choice over (A)/(B), read from next-token log-probabilities."""

    model: str | None = None
    principles_per_comparison: int = 1
    ensemble: str = "mean"
    debias_positions: bool = True
    chain_of_thought: bool = False
    cot_max_new_tokens: int = 96
    cot_low: float = 0.4
    cot_high: float = 0.6
    min_confidence: float = 0.0
    batch_size: int = 8
    max_length: int = 2048
    chunk_size: int = 32


@dataclass
class RewardConfig:
    """Preference model on the AI labels; soft targets by default (the paper found them better)."""

    model: str | None = None
    soft_labels: bool = True
    helpful_preferences: str | None = None
    eval_fraction: float = 0.1
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(learning_rate=1e-5, max_length=1024))


@dataclass
class PPOConfig:
    """PPO through trl; names follow trl's PPOConfig where one exists."""

    kl_coef: float = 0.001
    response_length: int = 128
    temperature: float = 0.7
    missing_eos_penalty: float | None = 1.0
    whiten_rewards: bool = False
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    total_episodes: int | None = None
    local_rollout_forward_batch_size: int = 16
    cliprange: float = 0.2
    vf_coef: float = 0.1
    step0_tolerance: float = 1e-3


@dataclass
class RLConfig:
    """Which optimiser turns the reward model into a policy; `ppo` is the paper's method."""

    algorithm: str = "ppo"
    beta: float = 0.1
    num_generations: int = 4


@dataclass
class EvalConfig:
    """Held-out evaluation: every model answers the same prompts greedily; scores, Elo, refusals, report.

    `models` entries are `base` (the SL run's base model), `sl` (the SL model), `rl`
    (`<output_dir>/rl_model`) or `name=reference` for any other model. An empty
    `judge_principles` uses every preference principle of the constitution.
    """

    red_team: str = "examples/eval_red_team.jsonl"
    helpful: str | None = "examples/eval_helpful.jsonl"
    max_red_team: int | None = None
    max_helpful: int | None = None
    models: list[str] = field(default_factory=lambda: ["base", "sl", "rl"])
    reward_model: str | None = None
    judge: bool = True
    judge_principles: list[str] = field(default_factory=list)
    bootstrap_rounds: int = 200
    refusal_judge: bool = False
    refusal_labels: str | None = "examples/refusal_labels.jsonl"
    max_new_tokens: int = 128
    chunk_size: int = 32
    show_examples: int = 3


@dataclass
class RLRunConfig:
    """`cai/rl.py`: sample pairs, label them with AI feedback, train a reward model, optimise the policy."""

    output_dir: str = "runs/sl"
    constitution: str = "constitutions/default.yaml"
    model: str = ""
    stages: list[str] = field(default_factory=lambda: ["sample", "label", "reward", "ppo", "eval"])
    seed: int = 0
    force: bool = False
    prompts: PromptsConfig = field(default_factory=lambda: PromptsConfig(helpful=None))
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(learning_rate=1e-6, save_steps=50))
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def policy_reference(self) -> str:
        """The SL model to start from: `model` if set, else this run directory's `sl_model`."""
        return self.model or str(Path(self.output_dir) / "sl_model")


# ---------------------------------------------------------------- Self-Instruct prompt pools


@dataclass
class SelfInstructConfig:
    """Growing prompt pools by Self-Instruct (Wang et al. 2022); the paper shows 6 seed + 2 generated examples."""

    kind: str = "red_team"
    seed_red_team: str = "examples/red_team.jsonl"
    seed_helpful: str = "examples/helpful.jsonl"
    seed_limit: int | None = None
    target_new: int = 1000
    max_rounds: int = 50
    max_empty_rounds: int = 3
    requests_per_round: int = 32
    fewshot_seed: int = 6
    fewshot_generated: int = 2
    new_per_request: int = 8
    request_format: str = "chat"
    rouge_threshold: float = 0.7
    min_words: int = 3
    max_words: int = 60
    blocklist: list[str] = field(default_factory=list)
    builtin_blocklist: bool = True
    category_keywords: dict[str, list[str]] = field(default_factory=dict)
    num_workers: int = 1
    show_examples: int = 10


@dataclass
class PromptsRunConfig:
    """`cai/prompts.py`: grow red-team and/or helpful prompt pools from seed files with Self-Instruct."""

    output_dir: str = "runs/prompts"
    model: str = "embedded"
    stages: list[str] = field(default_factory=lambda: ["grow"])
    seed: int = 0
    force: bool = False
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=0.8, top_p=0.95, max_new_tokens=256))
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
