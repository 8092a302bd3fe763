"""Shared plumbing for trl trainers: typed settings -> trl config, JSONL logs, resume, atomic save.

trl does the training; this module only builds its arguments strictly (an unknown `extra`
key is an error, not a silent drop), keeps the logs where the report can read them, and
makes sure a half-saved model is never mistaken for a finished one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from cai import models
from cai.config import TrainingConfig, closest
from cai.errors import CaiError

TYPED_FIELDS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "weight_decay",
    "logging_steps",
    "save_steps",
    "save_total_limit",
)


def trainer_config(config_cls: type, settings: TrainingConfig, *, section: str, output_dir: Path, seed: int, **fixed: Any) -> Any:
    """Build a trl/transformers config from our typed section plus its validated `extra` dict."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in settings.extra:
        if key not in known:
            raise CaiError(f"{section}.extra.{key}: not a setting of trl's {config_cls.__name__} ({closest(key, sorted(known))})")
    values: dict[str, Any] = {name: getattr(settings, name) for name in TYPED_FIELDS if name in known}
    if "max_length" in known:
        values["max_length"] = settings.max_length
    # Always explicit: trl defaults it to True (slow on CPU), and transformers 5 renamed it.
    values["activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"] = settings.gradient_checkpointing
    values.update(
        output_dir=str(output_dir),
        seed=seed,
        report_to=list(settings.report_to) or "none",
        save_strategy="steps",
        logging_strategy="steps",
        bf16=models.train_in_bf16(),
        disable_tqdm=False,
    )
    if values["bf16"] and "use_cpu" in known and models.on_cpu():
        values["use_cpu"] = True  # transformers refuses bf16 without a GPU unless told it trains on the CPU
    values.update(fixed)
    values.update(settings.extra)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as error:
        raise CaiError(f"{section}: trl rejected the settings ({str(error).splitlines()[0]}); fix the value") from None


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete `checkpoint-N` directory, to resume a killed training run."""
    from transformers.trainer_utils import get_last_checkpoint

    if not directory.is_dir():
        return None
    return get_last_checkpoint(str(directory))


def jsonl_log_callback(path: Path, *, stage: str) -> Any:
    """A TrainerCallback writing every logged metric dict as a JSONL line (the report reads these)."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = {"stage": stage, "step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({k: _finite(v) for k, v in entry.items()}) + "\n")

    return JsonlLog()


def no_final_checkpoint_callback() -> Any:
    """A TrainerCallback that drops the checkpoint transformers writes at the last step.

    Every stage saves its trained model right after training; that last checkpoint (weights and
    optimizer state: ~1.5 GB and ~10 s for the embedded model) would only serve a resume of a
    training that has already ended. Checkpoints every `save_steps` before it stay.
    """
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_save = False

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            control.should_save = False

    return NoFinalCheckpoint()


def _finite(value: Any) -> Any:
    """NaN/inf become null so every line stays valid JSON (trl logs NaN variances on tiny batches)."""
    import math

    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def replace_directory(staging: Path, final: Path) -> None:
    """Move a fully written artefact into place; an existing one is set aside, never deleted."""
    if final.exists():
        final.rename(final.with_name(f"{final.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    staging.rename(final)


def save_trained(trainer: Any, tokenizer: Any, destination: Path, *, merge_lora: bool, padding_side: str, accelerator: Any) -> None:
    """save_pretrained into a staging directory, then move it into place; a peft model is merged
    first when asked, so the artefact loads with plain `from_pretrained`."""
    from accelerate.utils import is_peft_model

    staging = fresh_staging(destination) if accelerator.is_main_process else destination
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(trainer.model)
    if merge_lora and is_peft_model(model):
        merged = model.merge_and_unload()
        if accelerator.is_main_process:
            merged.save_pretrained(staging)
    else:
        trainer.save_model(str(staging))
    if accelerator.is_main_process:
        tokenizer.padding_side = padding_side
        tokenizer.save_pretrained(staging)
        replace_directory(staging, destination)
    accelerator.wait_for_everyone()


def fresh_staging(final: Path) -> Path:
    staging = final.with_name(f".{final.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    return staging
