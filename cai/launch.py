"""What every stage script shares: parse `--config` + overrides, build the accelerator, run stages.

User mistakes become one line on stderr and exit code 2 here and only here.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence, TypeVar

from cai.config import check_stages, load_config, split_cli
from cai.errors import exit_on_user_error
from cai.run_store import RunStore

T = TypeVar("T")


def main(config_cls: type[T], argv: Sequence[str] | None, run: Callable[[T, Any], None], *, usage: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage.strip())
        return 0 if argv else 2

    def launch() -> int:
        from cai.preflight import check_before_run

        path, overrides = split_cli(argv)
        config = load_config(config_cls, path, overrides)
        check_before_run(config)  # before the run directory, the manifest or any model is written or loaded
        return start(config, run)

    return exit_on_user_error(launch)


def start(config: Any, run: Callable[[Any, Any], None], *, tag: str = "cai") -> int:
    """Build the accelerator for a loaded config and run; every entry point (stage scripts, `cai eval`) comes through here."""
    quiet_libraries()
    from accelerate import Accelerator

    from cai import models

    models.use_precision(config.precision)
    replaced = autocast_like_the_run()
    accelerator = Accelerator()
    if accelerator.is_main_process:
        print(f"[{tag}] {accelerator.num_processes} process(es) on {accelerator.device} in {models.compute_precision()}{precision_note(config.precision)}, output_dir={getattr(config, 'output_dir', '')}")
        if replaced:
            print(f"[{tag}] precision={config.precision} resolves to bf16, so the launcher's --mixed_precision {replaced} is not used")
    run(config, accelerator)
    return 0


def autocast_like_the_run() -> str | None:
    """Make every Accelerator of this process autocast to bf16 when the run computes in bf16.

    transformers' trainers follow their `bf16` flag, but trl's PPO builds its own Accelerator,
    which reads accelerate's ACCELERATE_MIXED_PRECISION. An fp32 run leaves the launcher's
    choice alone (fp16 on GPUs without bf16). Returns the launcher's value if it said otherwise.
    """
    from cai import models

    if not models.train_in_bf16():
        return None
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    return launched if launched not in ("no", "bf16") else None


def precision_note(setting: str) -> str:
    """Why the run computes in the precision it does, for the launch line."""
    from cai import models

    if setting == "auto":
        return " (precision=auto: bf16 instructions found)" if models.bf16_native() else " (precision=auto: no bf16 instructions here)"
    if setting == "bf16" and not models.bf16_native():
        return " (precision=bf16 without bf16 instructions: emulated, slower than fp32)"
    return ""


def quiet_libraries() -> None:
    """Keep library chatter (advisory warnings, hub probes) out of the stage output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr; stage and trainer bars use tqdm directly
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def run_stages(config: Any, store: RunStore, accelerator: Any, pipeline: str, *, constitution: Any = None, tag: str, rerun_done: bool = False) -> None:
    """Run the selected stages of `pipeline` (cai/stages.py) in order; a finished stage is skipped unless `force` is set.

    With `rerun_done` a finished stage runs again without being reset (`python -m cai eval`:
    every record is on disk, so a rerun only recomputes the summary and the report).
    """
    from cai import cards
    from cai.stages import pipeline as stages_of

    stages = stages_of(pipeline)
    selected = check_stages(list(config.stages), [s.name for s in stages])
    timed: list[tuple[str, float]] = []
    for stage in (s for s in stages if s.name in selected):
        interrupted = config.force and store.stage_info(stage.name).get("status") == "running"  # force also restarts a failed or killed stage
        if store.stage_done(stage.name) or interrupted:
            if not config.force and not rerun_done:
                if accelerator.is_main_process:
                    print(f"[{tag}] {stage.name}: already done in {store.root}, skipping (force=true to redo)")
                continue
            if config.force:
                moved = store.reset_stage(stage.name, stage.owns)
                if accelerator.is_main_process and moved:
                    print(f"[{tag}] {stage.name}: force=true, previous outputs kept as {', '.join(p.name for p in moved)}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            print(f"[{tag}] {stage.name}: running")
        store.remove_partial_writes(stage.owns)  # *.tmp of a killed atomic write
        started = time.perf_counter()
        store.record_stage_start(stage.name)
        stage.run(config, store, accelerator, constitution)
        accelerator.wait_for_everyone()
        seconds = time.perf_counter() - started
        timed.append((stage.name, seconds))
        store.record_stage_time(stage.name, seconds)
        cards.after_stage(config, store)  # model and dataset cards for what the run now holds (main process)
    cards.after_launch(config, store, accelerator)  # hub.push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and timed:
        print(f"[{tag}] stage times: " + ", ".join(f"{name} {format_seconds(seconds)}" for name, seconds in timed) + f" (total {format_seconds(sum(s for _, s in timed))})")


def format_seconds(seconds: float) -> str:
    """`42s`, `3m05s`: stage times as a person reads them."""
    whole = round(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s"
