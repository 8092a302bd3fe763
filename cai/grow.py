"""Self-Instruct: grow red-team and helpful prompt pools from seed files, for cai/sl.py and cai/rl.py.

    accelerate launch cai/grow.py --config configs/prompts.yaml             # grow a pool
    accelerate launch cai/grow.py --config configs/demo/prompts.yaml        # embedded model, CPU
    accelerate launch cai/grow.py --config configs/demo/prompts.yaml self_instruct.kind=both self_instruct.target_new=50
    accelerate launch cai/sl.py --config configs/sl.yaml prompts.red_team=runs/prompts/pool.jsonl prompts.helpful=runs/prompts/helpful_pool.jsonl

Overrides are dotted key=value pairs after --config. Stages: grow. Writes <output_dir>/pool.jsonl
(red-team) and <output_dir>/helpful_pool.jsonl; a killed run continues after its last round.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # run as a file: import the package, not its modules


def run(config, accelerator) -> None:
    from cai import models
    from cai.launch import run_stages
    from cai.run_store import RunStore
    from cai.self_instruct.pool import load_seeds, seed_path, selected_kinds

    for kind in selected_kinds(config.self_instruct):  # seed mistakes before a model is loaded
        load_seeds(seed_path(config.self_instruct, kind), kind=kind, limit=config.self_instruct.seed_limit, seed=config.seed)
    store = RunStore(config.output_dir, is_main=accelerator.is_main_process)
    with accelerator.main_process_first():  # the embedded model is converted once, by one process
        models.resolve(config.model, setting="model")
    store.begin(config, constitution=None, models={"self_instruct": config.model}, script="prompts")
    run_stages(config, store, accelerator, "grow", tag="prompts")


def main(argv: list[str] | None = None) -> int:
    from cai.config import PromptsRunConfig
    from cai.launch import main as launch_main

    return launch_main(PromptsRunConfig, argv, run, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
