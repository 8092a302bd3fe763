"""What every stage script shares: parse `--config` + overrides, build the accelerator, run stages.

User mistakes become one line on stderr and exit code 2 here and only here.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

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
        path, overrides = split_cli(argv)
        config = load_config(config_cls, path, overrides)
        quiet_libraries()
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.is_main_process:
            print(f"[cai] {accelerator.num_processes} process(es) on {accelerator.device}, output_dir={getattr(config, 'output_dir', '')}")
        run(config, accelerator)
        return 0

    return exit_on_user_error(launch)


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


def run_stages(
    config: Any,
    store: RunStore,
    accelerator: Any,
    stages: Mapping[str, Sequence[str]],
    functions: Mapping[str, Callable[[], None]],
    *,
    tag: str,
) -> None:
    """Run the selected stages in order; a finished stage is skipped unless `force` is set."""
    selected = check_stages(list(config.stages), list(stages))
    for stage in selected:
        interrupted = config.force and store.stage_info(stage).get("status") == "running"  # force also restarts a failed or killed stage
        if store.stage_done(stage) or interrupted:
            if not config.force:
                if accelerator.is_main_process:
                    print(f"[{tag}] {stage}: already done in {store.root}, skipping (force=true to redo)")
                continue
            moved = store.reset_stage(stage, stages[stage])
            if accelerator.is_main_process and moved:
                print(f"[{tag}] {stage}: force=true, previous outputs kept as {', '.join(p.name for p in moved)}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            print(f"[{tag}] {stage}: running")
        functions[stage]()
        accelerator.wait_for_everyone()
