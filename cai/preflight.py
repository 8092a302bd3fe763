"""What a launch checks before it writes anything: the run directory can be made, the model
references and prompt files exist, the manifest is one of ours, LoRA targets name real modules.

Each check is cheap (no weights load; LoRA targets are matched on an empty, meta-device copy of
the model built from its config: config.json, a GGUF file's metadata, an adapter's base model's),
so a mistake costs one `cai: error:` line instead of a run folder, a manifest and a model load
that the first stage then throws away.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cai import models
from cai.errors import CaiError
from cai.prompt_sources import check_prompt_file, is_file_source
from cai.run_store import RunStore

MODEL_SETTINGS = ("model", "sl.critique_model", "feedback.model", "reward.model")
# prompt files and the stages that read them (a file no selected stage reads is not checked)
PROMPT_SETTINGS = {
    "prompts.red_team": ("generate", "sample", "policy"),
    "prompts.helpful": ("generate", "sample", "policy"),
    "eval.red_team": ("eval",),
    "eval.helpful": ("eval",),
    "eval.benign": ("eval",),
}


def check_before_run(config: Any) -> None:
    """Raise the first problem found, before the run directory or any model is touched."""
    check_output_dir(Path(config.output_dir))
    manifest = Path(config.output_dir) / "manifest.json"
    if manifest.is_file():
        RunStore(config.output_dir).manifest()  # a list or broken JSON: one line now, not a traceback later
    for setting in MODEL_SETTINGS:
        reference = lookup(config, setting)
        if isinstance(reference, str) and reference.strip():
            check_model_reference(reference, setting=setting)
    for setting, readers in PROMPT_SETTINGS.items():
        source = lookup(config, setting)
        if not set(readers) & set(getattr(config, "stages", ())):
            continue
        if isinstance(source, str) and source.strip() and is_file_source(source):
            check_prompt_file(Path(source).expanduser(), setting)
    if getattr(config, "precision", "auto") == "bf16":
        check_bf16_device()
    feedback = getattr(config, "feedback", None)
    if feedback is not None and feedback.contrastive_openings and feedback.method != "contrastive":
        raise CaiError(f"feedback.contrastive_openings: only the contrastive method writes openings, and feedback.method is {feedback.method!r}; set feedback.method=contrastive or contrastive_openings=false")
    lora = getattr(config, "lora", None)
    if lora is not None and lora.enabled:
        reference = config.policy_reference() if hasattr(config, "policy_reference") else config.model
        check_lora_targets(reference, lora.target_modules)


def check_bf16_device() -> None:
    """precision=bf16 on a GPU without bf16 (before Ampere) would fail at the first trainer; a CPU can always emulate it."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise CaiError(f"precision: bf16 is not supported by {torch.cuda.get_device_name()}; use precision=auto or fp32")


def lookup(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def check_output_dir(path: Path) -> None:
    """`output_dir` exists as a writable directory, or its nearest existing parent is one."""
    path = path.expanduser()
    if path.exists():
        if not path.is_dir():
            raise CaiError(f"output_dir: {path} exists and is not a directory; choose another output_dir")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CaiError(f"output_dir: {path} is not writable; fix its permissions or choose another output_dir")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CaiError(f"output_dir: {path} cannot be made, {parent} is a file, not a directory; choose another output_dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaiError(f"output_dir: {path} cannot be made, {parent} is not writable; fix its permissions or choose another output_dir")


def check_model_reference(reference: str, *, setting: str) -> None:
    """The reference resolves (the embedded model's package is installed; it is converted later, once)."""
    if reference.strip() == models.EMBEDDED:
        models.embedded_gguf_path()
    else:
        models.resolve(reference, setting=setting)


def check_lora_targets(reference: str, targets: str | list[str]) -> None:
    """Every `lora.target_modules` entry matches a module of the model (peft's rule: the full name
    or its last dotted parts); checked on a meta-device copy, so nothing loads."""
    if isinstance(targets, str) or not reference:
        return  # "all-linear" or a regex: peft's own rules
    config = config_without_weights(reference)
    if config is None:
        return  # a model not made yet, a hub id not cached offline: checked when it loads
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture this transformers cannot build: the stage that loads it reports it
        return
    names = [name for name, _ in model.named_modules() if name]
    suffixes = {".".join(name.split(".")[-k:]) for name in names for k in range(1, len(name.split(".")) + 1)}
    unknown = [target for target in targets if target not in suffixes]
    if unknown:
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if getattr(getattr(module, "weight", None), "ndim", 0) == 2})
        raise CaiError(f"lora.target_modules: {', '.join(map(repr, unknown))} not in {reference} (its weight layers: {', '.join(layers)}); use some of those or 'all-linear'")


def config_without_weights(reference: str, *, seen: frozenset[str] = frozenset()) -> Any | None:
    """The config of the model a reference names, read without its weights: a directory's config.json,
    a GGUF file's metadata (the embedded model's before its conversion), an adapter's base model
    (resolved the same way), a hub id's cached config. None when there is nothing to read yet."""
    from transformers import AutoConfig

    reference = reference.strip()
    try:
        if reference == models.EMBEDDED:
            directory = models.embedded_checkpoint_dir()
            return AutoConfig.from_pretrained(directory) if (directory / "config.json").is_file() else models.gguf_config(models.embedded_gguf_path())
        path = Path(reference).expanduser()
        if reference.endswith(".gguf"):
            return models.gguf_config(path) if path.is_file() else None
        if (path / "adapter_config.json").is_file():
            base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
            if not isinstance(base, str) or not base.strip() or str(path.resolve()) in seen:
                return None
            return config_without_weights(base, seen=seen | {str(path.resolve())})
        if (path / "config.json").is_file():
            return AutoConfig.from_pretrained(path)
        if path.exists():
            return None  # a directory without a config yet
        return AutoConfig.from_pretrained(reference)  # a hub id: its config.json (from the cache when offline)
    except Exception:  # offline without a cached config, an unreadable file: the stage that loads it reports it
        return None
