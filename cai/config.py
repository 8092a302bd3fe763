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
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from cai.errors import CaiError
from cai.layout import LEGACY_STAGE_NAMES, SL_MODEL
from cai.stages import stage_names

T = TypeVar("T")


# ---------------------------------------------------------------- field helpers


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field with its one-line doc and its range, both checked/printed from here (`cai validate --explain`)."""
    metadata = {"doc": doc, "range": (ge, gt, le, lt)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


Backend = Literal["transformers", "vllm"]
PrincipleSelection = Literal["random", "category"]
RevisionMode = Literal["critique_revision", "context_distillation"]
SelectionScorer = Literal["likelihood_ratio"]
Ensemble = Literal["mean", "logit_mean"]
FeedbackMethod = Literal["multiple_choice", "contrastive", "pointwise", "likelihood_ratio"]
PairJudgeMethod = Literal["multiple_choice", "pointwise", "likelihood_ratio"]
Algorithm = Literal["ppo", "dpo", "grpo", "rloo"]
PoolKind = Literal["red_team", "helpful", "both"]
RequestFormat = Literal["chat", "completion"]
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = typing.get_args(Precision)  # the choices, for command-line flags


# ---------------------------------------------------------------- sections shared by stages


@dataclass
class PromptsConfig:
    """Where red-team and helpful prompts come from: a JSONL/JSON/CSV/Parquet file or a hub dataset."""

    red_team: str = setting("examples/red_team.jsonl", "red-team prompt source: a file or a hub dataset id")
    red_team_column: str = setting("prompt", "column holding the red-team prompt text")
    helpful: str | None = setting("examples/helpful.jsonl", "helpful prompt source (null for none)")
    helpful_column: str = setting("prompt", "column holding the helpful prompt text")
    split: str = setting("train", "dataset split read from a hub dataset")
    max_red_team: int | None = setting(None, "keep at most this many red-team prompts (null: all)", ge=1)
    max_helpful: int | None = setting(None, "keep at most this many helpful prompts (null: all)", ge=1)
    shuffle: bool = setting(True, "shuffle with the run's seed before taking max_* prompts")


@dataclass
class GenerationConfig:
    """Decoding settings shared by every stage that generates text."""

    backend: Backend = setting("transformers", "generation engine: transformers (always works) or vllm (GPU, optional)")
    batch_size: int = setting(16, "prompts generated per batch on each process", ge=1)
    max_new_tokens: int = setting(128, "longest response, in tokens", ge=1)
    temperature: float = setting(0.0, "sampling temperature; 0 decodes greedily", ge=0)
    top_p: float = setting(1.0, "nucleus sampling mass", gt=0, le=1)
    repetition_penalty: float = setting(1.0, "penalty on repeated tokens (1: none)", gt=0)
    stop: list[str] = setting(doc="extra stop strings, besides EOS", factory=list)
    max_prompt_length: int = setting(2048, "longest prompt, in tokens (longer prompts are left out or cut)", ge=1)
    vllm_gpu_memory_utilization: float = setting(0.5, "share of GPU memory vLLM may take", gt=0, le=1)


@dataclass
class LoraConfig:
    """peft LoRA as a switch: the same code trains full weights when `enabled` is false."""

    enabled: bool = setting(False, "train LoRA adapters instead of full weights")
    r: int = setting(16, "LoRA rank", ge=1)
    alpha: int = setting(32, "LoRA scaling alpha", ge=1)
    dropout: float = setting(0.05, "dropout on the LoRA path", ge=0, lt=1)
    target_modules: str | list[str] = setting("all-linear", "modules that get adapters (peft's target_modules)")
    merge: bool = setting(True, "save the model with adapters merged into the weights")


@dataclass
class TrainingConfig:
    """The trainer settings users touch most; anything else of trl's config goes in `extra`."""

    learning_rate: float = setting(1e-5, "peak learning rate", gt=0)
    num_train_epochs: float = setting(1.0, "passes over the data (ignored when max_steps > 0)", gt=0)
    max_steps: int = setting(-1, "stop after this many optimiser steps (-1: use num_train_epochs)", ge=-1)
    per_device_train_batch_size: int = setting(8, "examples per process per step", ge=1)
    gradient_accumulation_steps: int = setting(1, "micro-batches accumulated per optimiser step", ge=1)
    max_length: int = setting(1024, "longest training sequence, in tokens", ge=1)
    warmup_ratio: float = setting(0.0, "share of steps spent warming the learning rate up", ge=0, le=1)
    lr_scheduler_type: str = setting("cosine", "transformers learning-rate schedule name")
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    logging_steps: int = setting(5, "log metrics every this many steps", ge=1)
    save_steps: int = setting(200, "checkpoint every this many steps", ge=1)
    save_total_limit: int = setting(2, "checkpoints kept (older ones are deleted by the trainer)", ge=1)
    gradient_checkpointing: bool = setting(False, "recompute activations to save memory")
    report_to: list[str] = setting(doc="experiment trackers (transformers' report_to): tensorboard, trackio, wandb, mlflow, ...", factory=list)
    extra: dict[str, Any] = setting(doc="any other setting of trl's trainer config, by its trl name", factory=dict)

    def problems(self) -> list[str]:
        """An unknown or uninstalled tracker fails here, not after the models have loaded."""
        import importlib.util

        found = []
        for name in self.report_to:
            if name in ("none", "all"):
                continue
            if name not in TRACKERS:
                found.append(f"report_to: unknown tracker {name!r}; valid: {', '.join(TRACKERS)}")
            elif not any(importlib.util.find_spec(module) for module in TRACKERS[name][1:]):
                found.append(f"report_to: {name} is not installed; pip install {TRACKERS[name][0]}, or remove it from report_to")
        return found


# transformers' report_to name -> (pip package, importable modules that provide it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard", "tensorboardX"),
    "trackio": ("trackio", "trackio"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet-ml", "comet_ml"),
    "clearml": ("clearml", "clearml"),
    "swanlab": ("swanlab", "swanlab"),
    "dvclive": ("dvclive", "dvclive"),
    "neptune": ("neptune", "neptune"),
    "azure_ml": ("azureml-core", "azureml"),
    "codecarbon": ("codecarbon", "codecarbon"),
    "dagshub": ("dagshub", "dagshub"),
    "flyte": ("flytekit", "flytekit"),
    "kubeflow": ("kubeflow", "kubeflow"),
}


HUB_ARTEFACTS = ("sl_model", "sl_data", "reward_model", "preferences", "rl_model")


@dataclass
class HubConfig:
    """Pushing artefacts (each folder with its model or dataset card) to the Hugging Face Hub at the end of a launch."""

    push: bool = setting(False, "upload hub.artefacts when the launch ends (huggingface_hub; token from HF_TOKEN or `hf auth login`)")
    repo_id: str | None = setting(None, "repo prefix user/name: each artefact goes to <repo_id>-<artefact>, e.g. user/name-rl-model")
    repo_ids: dict[str, str] = setting(doc="artefact -> its own repo id, overriding repo_id (e.g. {rl_model: user/my-model})", factory=dict)
    private: bool = setting(True, "create the repos private")
    artefacts: list[str] = setting(doc="what to push: " + ", ".join(HUB_ARTEFACTS), factory=list)

    def problems(self) -> list[str]:
        """Cross-field checks; names relative to the section (the loader prefixes `hub.`)."""
        found = []
        for name in [*self.artefacts, *self.repo_ids]:
            if name not in HUB_ARTEFACTS:
                found.append(f"artefacts: unknown artefact {name!r}; valid: {', '.join(HUB_ARTEFACTS)}")
        for name, repo in {"repo_id": self.repo_id, **{f"repo_ids.{k}": v for k, v in self.repo_ids.items()}}.items():
            if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/"))):
                found.append(f"{name}: {repo!r} is not a Hub repo id; write user/name")
        if self.push and not self.repo_id and any(a not in self.repo_ids for a in self.artefacts):
            found.append("repo_id: hub.push=true needs a repo id; set hub.repo_id=user/name (or hub.repo_ids per artefact)")
        if self.push and not self.artefacts:
            found.append("artefacts: hub.push=true with nothing to push; list artefacts, e.g. hub.artefacts=[rl_model]")
        return found


@dataclass
class RunConfig:
    """What every launch has: where it writes, its constitution, its model, which stages, seed, force, precision.

    A base for the per-script configs below (fields only, no behaviour), so these seven
    settings have one name and one doc everywhere.
    """

    PIPELINE: ClassVar[str] = ""

    output_dir: str = setting("runs/sl", "the run directory: records, models, manifest")
    constitution: str = setting("constitutions/default.yaml", "the constitution YAML (principles and demonstrations)")
    model: str = setting("embedded", "the policy model: hub id, local directory, .gguf file or `embedded`")
    stages: list[str] = setting(doc="stages to run, in pipeline order (see cai/stages.py)", factory=list)
    seed: int = setting(0, "seed for sampling, shuffling and training")
    force: bool = setting(False, "redo finished stages (old outputs are renamed, never deleted)")
    precision: Precision = setting("auto", "compute precision: bf16 (frozen models in bf16, training autocast over fp32 weights), fp32, or auto: bf16 where the GPU or CPU has bf16 instructions (AVX512-BF16, AMX), else fp32")


# ---------------------------------------------------------------- SL-CAI


@dataclass
class GatesConfig:
    """Quality gates every revision must pass to become a training target (cai/supervised/gates.py)."""

    enabled: bool = setting(True, "apply the gates (false: train on every non-empty revision, as the paper did)")
    parrot_rouge: float = setting(0.45, "reject a revision whose ROUGE-L F with the critique/revision request, the critique or a demonstration reaches this", gt=0, le=1)
    unchanged_rouge: float = setting(0.8, "reject a revision whose ROUGE-L F with the text it revises reaches this", gt=0, le=1)
    min_words: int = setting(4, "reject revisions with fewer words (empty)", ge=1)
    min_distinct_2: float = setting(0.6, "reject revisions of 12+ words whose share of distinct word bigrams is below this (loops)", ge=0, le=1)
    max_repeat_run: int = setting(3, "reject a revision that repeats one word more often than this back to back", ge=1)
    meta_commentary: bool = setting(True, "reject revisions that talk about 'the response' or 'the assistant' instead of answering")
    trim_unfinished: bool = setting(True, "cut an unfinished last sentence (the token limit) before the gates run")
    require_sentence_end: bool = setting(True, "reject revisions that still end mid-sentence")


@dataclass
class SLConfig:
    """Critique-revision settings; the paper's values are 4 rounds, a principle per round, 5 demos."""

    critique_model: str | None = setting(None, "model that critiques and revises (null: the policy model)")
    revision_rounds: int = setting(1, "critique-revision rounds per response", ge=1)
    principle_per_round: bool = setting(True, "draw a new principle for every round")
    principle_selection: PrincipleSelection = setting("random", "random (the paper) or category: draw among principles that declare the prompt's category")
    revision_mode: RevisionMode = setting("critique_revision", "critique_revision (the paper) or context_distillation: answer the request again with principle and critique in a system turn")
    critique: bool = setting(True, "write a critique before each revision (the paper); false revises directly from the principle (the paper's direct revisions, one generation fewer per round)")
    revision_samples: int = setting(1, "revisions sampled per round; above 1 the selection scorer keeps the best that passes the gates", ge=1)
    revision_temperature: float = setting(0.8, "sampling temperature of the revision samples when revision_samples > 1", gt=0)
    revision_sentences: int | None = setting(None, "keep only the first N sentences a revision writes after its revision_opening (null: all); 1 makes a decline end instead of rambling on", ge=1)
    selection_scorer: SelectionScorer = setting("likelihood_ratio", "best-of-n scorer: likelihood_ratio = log p(revision | principle, request) - log p(revision | request)")
    gates: GatesConfig = setting(doc="quality gates on revisions", factory=GatesConfig)
    few_shot: int = setting(5, "demonstrations shown before each critique", ge=0)
    train_on_all_rounds: bool = setting(False, "fine-tune on every round's revision, not only the last")
    helpful_per_red_team: float | None = setting(1.0, "helpful examples mixed in per red-team example (null: every accepted helpful answer)", ge=0)
    chunk_size: int = setting(32, "prompts per resumable shard", ge=1)
    show_examples: int = setting(3, "chains printed at the end", ge=0)


@dataclass
class SLRunConfig(RunConfig):
    """`cai/sl.py`: generate critique-revision data, then supervised fine-tuning."""

    PIPELINE: ClassVar[str] = "sl"

    stages: list[str] = setting(doc="stages to run, in pipeline order: " + ", ".join(stage_names("sl")), factory=lambda: stage_names("sl"))

    prompts: PromptsConfig = setting(doc="prompt sources", factory=PromptsConfig)
    generation: GenerationConfig = setting(doc="decoding", factory=GenerationConfig)
    sl: SLConfig = setting(doc="critique-revision", factory=SLConfig)
    sft: TrainingConfig = setting(doc="supervised fine-tuning", factory=TrainingConfig)
    lora: LoraConfig = setting(doc="LoRA", factory=LoraConfig)
    hub: HubConfig = setting(doc="pushing sl_model / sl_data to the Hub", factory=lambda: HubConfig(artefacts=["sl_model"]))


# ---------------------------------------------------------------- loading


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read `path` (optional), apply dotted overrides, and build `cls`, reporting every problem at once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(path, what="config")
    overridden: dict[str, str] = {}
    for override in overrides:
        key, value = parse_override(override)
        set_dotted(raw, key, value)
        overridden[key] = override.strip().lstrip("-")
    problems: list[str] = []
    config = _build(cls, raw, "", problems)
    checked: list[str] = []
    _check(config, "", checked)  # ranges, stages, cross-field rules; a setting already reported is not reported twice
    reported = {problem.split(":")[0] for problem in problems}
    problems += [problem for problem in checked if problem.split(":")[0] not in reported]
    if problems:
        raise CaiError("; ".join(_blame(problem, source, overridden) for problem in problems))
    return config


def _blame(problem: str, source: str, overridden: dict[str, str]) -> str:
    """Name the override (`override sl.revison_rounds=2: ...`) when it, not the file, holds the bad key."""
    for key, text in overridden.items():
        if problem.startswith((f"{key}:", f"{key} ")) or f"'{key}'" in problem:
            return f"override {text}: {problem}"
    return f"{source}: {problem}"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not "last one wins"."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path, *, what: str) -> dict[str, Any]:
    """Safe-load a YAML file that must hold a mapping, with errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CaiError(f"{path}: {what} file not found; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CaiError(f"{path}: {what} file is not UTF-8 text (a binary file?); point at the YAML file") from None
    except OSError as error:
        raise CaiError(f"{path}: cannot read the {what} file ({error.strerror}); check its permissions") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
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
            if dotted in MOVED:
                problems.append(f"{dotted}: this setting moved to {MOVED[dotted]}; write that key instead")
            else:
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
    if origin is Literal:
        if value in args:
            return value
        problems.append(f"{dotted}: unknown choice {value!r}; valid choices: {', '.join(map(str, args))}")
        return args[0]
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


def _check(config: Any, prefix: str, problems: list[str]) -> None:
    """Ranges from each field's `setting(..., ge=/gt=/le=/lt=)`, the stage list, and each section's cross-field `problems()`."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        dotted = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            _check(value, f"{dotted}.", problems)
            continue
        bounds = spec.metadata.get("range")
        if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_problem(value, *bounds)
            if problem:
                problems.append(f"{dotted}: {problem}, got {value!r}; {range_text(*bounds)}")
    pipeline = getattr(config, "PIPELINE", "")
    if pipeline:
        config.stages = [LEGACY_STAGE_NAMES.get(s, s) for s in config.stages]  # `stages=ppo` still selects the policy stage
        known = stage_names(pipeline)
        unknown = [s for s in config.stages if s not in known]
        if unknown:
            problems.append(f"stages: unknown stage {unknown[0]!r}; stages are {', '.join(known)}")
        elif not config.stages:
            problems.append(f"stages: no stage selected; choose from {', '.join(known)}")
    extra = getattr(config, "problems", None)
    if callable(extra):
        problems.extend(f"{prefix}{problem}" for problem in extra())


def range_problem(value: float, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str | None:
    if ge is not None and value < ge:
        return f"must be at least {ge:g}"
    if gt is not None and value <= gt:
        return f"must be above {gt:g}"
    if le is not None and value > le:
        return f"must be at most {le:g}"
    if lt is not None and value >= lt:
        return f"must be below {lt:g}"
    return None


def range_text(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else "(-inf"
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else "inf)"
    return f"use a value in {low}, {high}"


def explain(cls: type, prefix: str = "") -> list[str]:
    """One line per setting: dotted name, type, default, range and doc (`python -m cai validate --explain`)."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for spec in dataclasses.fields(cls):
        dotted = f"{prefix}{spec.name}"
        value = getattr(default, spec.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{dotted}:  {spec.metadata.get('doc', '')}")
            lines.extend(explain_section(value, f"{dotted}."))
            continue
        lines.append(_explain_line(dotted, hints[spec.name], value, spec))
    return lines


def explain_section(section: Any, prefix: str) -> list[str]:
    hints = typing.get_type_hints(type(section))
    return [_explain_line(f"{prefix}{spec.name}", hints[spec.name], getattr(section, spec.name), spec) for spec in dataclasses.fields(section)]


def _explain_line(dotted: str, hint: Any, value: Any, spec: Any) -> str:
    kind = "|".join(map(str, typing.get_args(hint))) if typing.get_origin(hint) is Literal else getattr(hint, "__name__", str(hint)).replace("typing.", "")
    bounds = spec.metadata.get("range")
    allowed = f" {range_text(*bounds).removeprefix('use a value in ')}" if bounds and any(b is not None for b in bounds) else ""
    return f"  {dotted} = {value!r}  ({kind}{allowed})  {spec.metadata.get('doc', '')}"


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

    responses_per_prompt: int = setting(2, "responses sampled per prompt (pairs are compared)", ge=2)
    temperature: float = setting(1.0, "sampling temperature for the pairs", ge=0)
    chunk_size: int = setting(32, "prompts per resumable shard", ge=1)


@dataclass
class FeedbackConfig:
    """The AI labeler: a feedback method (cai/feedback/methods.py), audited on a gold preference set."""

    model: str | None = setting(None, "feedback model (null: the SL run's base model)")
    method: FeedbackMethod = setting("multiple_choice", "multiple_choice (the paper's (A)/(B) judge), contrastive (RLCD pairs), pointwise (yes/no per response) or likelihood_ratio")
    ratio_scale: float = setting(10.0, "likelihood_ratio: P(first) = sigmoid(ratio_scale * (ratio_1 - ratio_2)); 10 calibrates SmolLM2-135M best on the gold set", gt=0)
    balance_principle: str | None = setting("less-evasive", "likelihood_ratio: preference principle averaged with every drawn one, against favouring refusals (null: none)")
    contrastive_p: float = setting(0.9, "contrastive: P(harmless-side response better) when the judge does not agree with the construction", ge=0.5, le=1)
    contrastive_openings: bool = setting(False, "contrastive: write the first words (a critique principle's revision_opening): the harmless side of a red-team prompt starts declining, and a helpful prompt's worse side is a needless decline; for models that never decline on their own")
    contrastive_judge: PairJudgeMethod | None = setting(None, "contrastive: method whose probability is used where it agrees with the construction (null: always contrastive_p)")
    gold: str | None = setting("examples/gold_preferences.jsonl", "gold preference set the labeler is audited on every run (null: no audit)")
    gold_pairs: int | None = setting(None, "audit the labeler on this many gold pairs, spread evenly over the kinds with the run's seed (null: all); the reward model is audited on all", ge=1)
    principles_per_comparison: int = setting(1, "preference principles drawn per comparison", ge=1)
    ensemble: Ensemble = setting("mean", "how principles' votes combine: mean of probabilities or logit_mean of log-odds")
    debias_positions: bool = setting(True, "score both orders and average, against position bias")
    chain_of_thought: bool = setting(False, "let the model reason before answering")
    cot_max_new_tokens: int = setting(96, "longest chain of thought, in tokens", ge=1)
    cot_low: float = setting(0.4, "with chain of thought, votes are clamped to [cot_low, cot_high]", ge=0, le=0.5)
    cot_high: float = setting(0.6, "upper end of the chain-of-thought clamp", ge=0.5, le=1)
    min_confidence: float = setting(0.0, "drop labels within this distance of 0.5", ge=0, le=0.5)
    batch_size: int = setting(8, "prompts scored per forward pass", ge=1)
    max_length: int = setting(2048, "longest judging prompt, in tokens (quoted texts are cut to fit)", ge=1)
    chunk_size: int = setting(32, "comparisons per resumable shard", ge=1)


@dataclass
class RewardConfig:
    """Preference model on the AI labels; soft targets by default (the paper found them better)."""

    model: str | None = setting(None, "reward-model base (null: the SL model)")
    soft_labels: bool = setting(True, "train on the feedback probabilities rather than hard winners")
    helpful_preferences: str | None = setting(None, "JSONL of human helpfulness comparisons to mix in")
    eval_fraction: float = setting(0.1, "share of comparisons held out to measure the reward model", ge=0, lt=1)
    length_balance: bool = setting(True, "weight pairs so chosen-longer and chosen-shorter pairs count equally (against rewarding length)")
    length_correction: bool = setting(False, "after training, fit the reward's slope per response token on the training responses and subtract it from every score (PPO, eval, gold audit): the length term a small reward model learns in place of harm")
    sl_revisions: bool = setting(False, "also train on this output_dir's SL chains: each red-team prompt's accepted revision preferred to its original response (constitution-derived, no judging)")
    sl_revision_p: float = setting(0.9, "reward.sl_revisions: P(revision better) of those pairs", ge=0.5, le=1)
    training: TrainingConfig = setting(doc="reward-model training", factory=lambda: TrainingConfig(learning_rate=1e-5, max_length=1024))


@dataclass
class PPOConfig:
    """PPO through trl; names follow trl's PPOConfig where one exists."""

    kl_coef: float = setting(0.001, "KL penalty to the SL policy", ge=0)
    response_length: int = setting(128, "longest rollout, in tokens", ge=1)
    temperature: float = setting(0.7, "rollout sampling temperature", gt=0)
    missing_eos_penalty: float | None = setting(1.0, "subtracted from the reward of a rollout without EOS (null: none)", gt=0)
    loop_penalty: float | None = setting(None, "subtracted from the reward of a rollout that repeats itself (the eval's looping test: under half of its word trigrams distinct); null: none", gt=0)
    whiten_rewards: bool = setting(False, "whiten rewards per mini-batch")
    num_ppo_epochs: int = setting(4, "PPO epochs per batch of rollouts", ge=1)
    num_mini_batches: int = setting(1, "mini-batches per PPO batch", ge=1)
    total_episodes: int | None = setting(None, "rollouts in all (null: one pass over the prompts per epoch)", ge=1)
    local_rollout_forward_batch_size: int = setting(16, "rollouts per forward pass", ge=1)
    cliprange: float = setting(0.2, "PPO ratio clip", gt=0)
    vf_coef: float = setting(0.1, "value-loss weight", ge=0)
    step0_tolerance: float = setting(1e-3, "largest ratio/reference gap allowed by the step-0 check in fp32 (bf16/fp16 runs allow at least 5e-2/2e-2)", gt=0)


@dataclass
class DPOConfig:
    """DPO on the AI-labelled pairs (offline, no reward model)."""

    beta: float = setting(0.1, "DPO temperature: strength of the pull towards the reference", gt=0)


@dataclass
class GroupConfig:
    """GRPO or RLOO through trl: several samples per prompt scored by the reward model."""

    num_generations: int = setting(4, "samples per prompt compared with each other", ge=2)
    kl_coef: float = setting(0.001, "KL penalty to the SL policy (trl's beta)", ge=0)
    response_length: int = setting(128, "longest sample, in tokens", ge=1)
    temperature: float = setting(0.7, "sampling temperature", gt=0)
    missing_eos_penalty: float | None = setting(1.0, "subtracted from the reward of a sample without EOS (null: none)", gt=0)
    loop_penalty: float | None = setting(None, "subtracted from the reward of a sample that repeats itself (the eval's looping test); null: none", gt=0)
    reward_batch_size: int = setting(16, "samples scored per reward-model forward pass", ge=1)


@dataclass
class RLConfig:
    """Which optimiser the policy stage uses; its settings live in the section named after it."""

    algorithm: Algorithm = setting("ppo", "ppo (the paper's; settings in ppo.*), dpo (dpo.*), grpo (grpo.*) or rloo (rloo.*)")
    reward_check_prompts: int = setting(8, "held-out prompts per eval set (red-team, helpful, benign) whose greedy responses the reward model scores before and after training (0: no check; the eval stage scores every model)", ge=0)


@dataclass
class EvalConfig:
    """Held-out evaluation: every model answers the same prompts greedily; scores, Elo, refusals, report.

    `models` entries are `base` (the SL run's base model), `sl` (the SL model), `rl`
    (`<output_dir>/rl_model`) or `name=reference` for any other model. An empty
    `judge_principles` uses every preference principle of the constitution.
    """

    red_team: str = setting("examples/eval_red_team.jsonl", "held-out red-team prompts")
    helpful: str | None = setting("examples/eval_helpful.jsonl", "held-out helpful prompts (null: none)")
    benign: str | None = setting("examples/eval_benign_alarming.jsonl", "held-out benign prompts that sound alarming, counted as helpful and as over-refusal (benign edgy); null: none")
    max_red_team: int | None = setting(None, "at most this many red-team prompts (null: all)", ge=1)
    max_helpful: int | None = setting(None, "at most this many helpful prompts (null: all)", ge=1)
    models: list[str] = setting(doc="models compared: base, sl, rl or name=reference", factory=lambda: ["base", "sl", "rl"])
    reward_model: str | None = setting(None, "reward model that scores responses (null: this run's)")
    judge: bool = setting(True, "pairwise AI-judge comparisons and Elo")
    judge_at_chance: bool = setting(True, "judge the models even when the judge's own gold audit (feedback.gold) is at chance; false skips the pairwise judging then (its Elo would mean nothing) and the report says why")
    judge_principles: list[str] = setting(doc="preference principle ids the judge uses (empty: all)", factory=list)
    bootstrap_rounds: int = setting(200, "bootstrap resamples for the Elo intervals", ge=1)
    refusal_judge: bool = setting(False, "also ask the judge whether each response refuses")
    refusal_labels: str | None = setting("examples/refusal_labels.jsonl", "labelled responses to measure refusal detectors on")
    max_new_tokens: int = setting(128, "longest response, in tokens", ge=1)
    chunk_size: int = setting(32, "prompts per resumable shard", ge=1)
    show_examples: int = setting(3, "example responses in the report", ge=0)


@dataclass
class RLRunConfig(RunConfig):
    """`cai/rl.py`: sample pairs, label them with AI feedback, train a reward model, optimise the policy."""

    PIPELINE: ClassVar[str] = "rl"

    stages: list[str] = setting(doc="stages to run, in pipeline order: " + ", ".join(stage_names("rl")), factory=lambda: stage_names("rl"))

    model: str = setting("", "the SL model to start from (empty: <output_dir>/sl_model)")
    prompts: PromptsConfig = setting(doc="prompt sources", factory=lambda: PromptsConfig(helpful=None))
    generation: GenerationConfig = setting(doc="decoding", factory=GenerationConfig)
    sample: SampleConfig = setting(doc="the sample stage", factory=SampleConfig)
    feedback: FeedbackConfig = setting(doc="the label stage's AI feedback", factory=FeedbackConfig)
    reward: RewardConfig = setting(doc="the reward stage", factory=RewardConfig)
    rl: RLConfig = setting(doc="the policy stage's algorithm", factory=RLConfig)
    ppo: PPOConfig = setting(doc="rl.algorithm=ppo", factory=PPOConfig)
    dpo: DPOConfig = setting(doc="rl.algorithm=dpo", factory=DPOConfig)
    grpo: GroupConfig = setting(doc="rl.algorithm=grpo", factory=GroupConfig)
    rloo: GroupConfig = setting(doc="rl.algorithm=rloo", factory=GroupConfig)
    training: TrainingConfig = setting(doc="policy training", factory=lambda: TrainingConfig(learning_rate=1e-6, save_steps=50))
    lora: LoraConfig = setting(doc="LoRA", factory=LoraConfig)
    eval: EvalConfig = setting(doc="the eval stage", factory=EvalConfig)
    hub: HubConfig = setting(doc="pushing reward_model / rl_model / preferences to the Hub", factory=lambda: HubConfig(artefacts=["reward_model", "rl_model"]))

    def policy_reference(self) -> str:
        """The SL model to start from: `model` if set, else this run directory's `sl_model`."""
        return self.model or str(Path(self.output_dir) / SL_MODEL)

    def problems(self) -> list[str]:
        """Said at load, before any model loads: PPO needs trl<1.13 (the `ppo` extra); each max_length
        must hold the longest response it scores (else the reward model sees cut responses)."""
        found = []
        if "reward" in self.stages and self.reward.training.max_length <= self.generation.max_new_tokens:
            found.append(
                f"reward.training.max_length: {self.reward.training.max_length} tokens cannot hold a sampled response of up to "
                f"generation.max_new_tokens={self.generation.max_new_tokens} plus its prompt; raise reward.training.max_length above {self.generation.max_new_tokens}"
            )
        if "policy" in self.stages and self.rl.algorithm in ("ppo", "grpo", "rloo"):
            length = getattr(self, self.rl.algorithm).response_length
            if self.training.max_length <= length:
                found.append(
                    f"training.max_length: {self.training.max_length} tokens cannot hold a rollout of up to {self.rl.algorithm}.response_length={length} "
                    f"plus its prompt, and the reward model scores rollouts within it; raise training.max_length above {length}"
                )
        if self.rl.algorithm == "ppo" and "policy" in self.stages:
            from cai.policy.availability import ppo_problem

            if problem := ppo_problem():
                found.append(problem)
        return found


# ---------------------------------------------------------------- Self-Instruct prompt pools


@dataclass
class SelfInstructConfig:
    """Growing prompt pools by Self-Instruct (Wang et al. 2022); the paper shows 6 seed + 2 generated examples."""

    kind: PoolKind = setting("red_team", "which pool to grow: red_team, helpful or both")
    seed_red_team: str = setting("examples/red_team.jsonl", "seed red-team prompts (id, prompt, category)")
    seed_helpful: str = setting("examples/helpful.jsonl", "seed helpful prompts")
    seed_limit: int | None = setting(None, "use at most this many seeds (null: all)", ge=1)
    target_new: int = setting(1000, "new prompts wanted per pool", ge=1)
    max_rounds: int = setting(50, "stop after this many rounds", ge=1)
    max_empty_rounds: int = setting(3, "stop after this many rounds in a row add nothing", ge=1)
    requests_per_round: int = setting(32, "few-shot requests per round", ge=1)
    fewshot_seed: int = setting(6, "seed examples per request", ge=0)
    fewshot_generated: int = setting(2, "generated examples per request", ge=0)
    new_per_request: int = setting(8, "new prompts asked for per request", ge=1)
    request_format: RequestFormat = setting("chat", "send requests as a chat turn or as raw completion text")
    rouge_threshold: float = setting(0.7, "drop a candidate this ROUGE-L-similar to the pool", gt=0, le=1)
    min_words: int = setting(3, "shortest accepted prompt, in words", ge=1)
    max_words: int = setting(60, "longest accepted prompt, in words", ge=1)
    blocklist: list[str] = setting(doc="extra phrases that reject a candidate", factory=list)
    builtin_blocklist: bool = setting(True, "also use the built-in blocklist")
    category_keywords: dict[str, list[str]] = setting(doc="category -> keywords that infer it", factory=dict)
    num_workers: int = setting(1, "processes for ROUGE-L filtering", ge=1)
    show_examples: int = setting(10, "accepted prompts printed per pool", ge=0)

    def problems(self) -> list[str]:
        found = []
        if self.fewshot_seed + self.fewshot_generated < 1:
            found.append("fewshot_seed: with fewshot_generated=0 it must be at least 1; the model needs examples (the paper: 6 + 2)")
        if self.max_words < self.min_words:
            found.append(f"max_words: {self.max_words} is below min_words={self.min_words}; raise max_words")
        if any(not phrase.strip() for phrase in self.blocklist):
            found.append("blocklist: contains an empty phrase; remove it")
        for category, words in self.category_keywords.items():
            if not isinstance(words, list) or not all(isinstance(word, str) and word.strip() for word in words):
                found.append(f"category_keywords.{category}: expected a list of non-empty keywords, got {words!r}")
        return found


@dataclass
class PromptsRunConfig(RunConfig):
    """`cai/grow.py`: grow red-team and/or helpful prompt pools from seed files with Self-Instruct."""

    PIPELINE: ClassVar[str] = "grow"

    stages: list[str] = setting(doc="stages to run, in pipeline order: " + ", ".join(stage_names("grow")), factory=lambda: stage_names("grow"))

    output_dir: str = setting("runs/prompts", "the run directory: pools, rounds, manifest")
    generation: GenerationConfig = setting(doc="decoding", factory=lambda: GenerationConfig(temperature=0.8, top_p=0.95, max_new_tokens=256))
    self_instruct: SelfInstructConfig = setting(doc="pool growth and filters", factory=SelfInstructConfig)


# old key -> where it lives now; an old key is an error naming the new one, never silently ignored
MOVED = {
    "rl.beta": "dpo.beta",
    "rl.num_generations": "grpo.num_generations (or rloo.num_generations)",
}
