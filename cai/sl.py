"""SL-CAI: red-team prompts -> response -> critique/revision rounds -> supervised fine-tuning.

    accelerate launch cai/sl.py --config configs/sl.yaml
    accelerate launch cai/sl.py --config configs/demo/sl.yaml                 # embedded model, CPU
    accelerate launch --cpu --num_processes 2 cai/sl.py --config configs/demo/sl.yaml output_dir=runs/x2
    accelerate launch cai/sl.py --config configs/demo/sl.yaml generation.max_new_tokens=64 sl.revision_rounds=2
    accelerate launch cai/sl.py --config configs/sl.yaml stages=sft --force

Overrides are dotted key=value pairs after --config. Stages: generate, sft.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # run as a file: import the package, not its modules


def run(config, accelerator) -> None:
    from cai import models
    from cai.constitution import load_constitution
    from cai.launch import run_stages
    from cai.run_store import RunStore

    constitution = load_constitution(config.constitution)
    store = RunStore(config.output_dir, is_main=accelerator.is_main_process)
    with accelerator.main_process_first():  # the embedded model is converted once, by one process
        models.resolve(config.model, setting="model")
    refs = {"policy": config.model, "critique_model": config.sl.critique_model or config.model}
    store.begin(config, constitution=constitution.manifest_entry(), models=refs, script="sl")
    run_stages(config, store, accelerator, "sl", constitution=constitution, tag="sl")


def main(argv: list[str] | None = None) -> int:
    from cai.config import SLRunConfig
    from cai.launch import main as launch_main

    return launch_main(SLRunConfig, argv, run, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
