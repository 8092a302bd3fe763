"""RLAIF: sample response pairs from the SL model, label them with AI feedback under the
constitution, train a reward model on the labels, and optimise the policy against it.

    accelerate launch cai/rl.py --config configs/rl.yaml                   # sl_model from an SL run
    accelerate launch cai/rl.py --config configs/demo/rl.yaml              # embedded, CPU, minutes
    accelerate launch cai/rl.py --config configs/rl.yaml stages=label,reward
    accelerate launch cai/rl.py --config configs/rl.yaml rl.algorithm=dpo  # or grpo, rloo

Stages (cai/stages.py): sample, label, reward, policy (trains with `rl.algorithm`; `ppo` is its
old name and still accepted), eval (held-out scores, Elo, refusal rates, then the report in
<output_dir>/report/).
Overrides are dotted key=value pairs after --config.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # run as a file: import the package, not its modules


def run(config, accelerator) -> None:
    from cai.constitution import load_constitution
    from cai.launch import run_stages
    from cai.run_store import RunStore

    constitution = load_constitution(config.constitution)
    store = RunStore(config.output_dir, is_main=accelerator.is_main_process)
    refs = {"sl_model": config.policy_reference()}
    store.begin(config, constitution=constitution.manifest_entry(), models=refs, script="rl")
    run_stages(config, store, accelerator, "rl", constitution=constitution, tag="rl")


def main(argv: list[str] | None = None) -> int:
    from cai.config import RLRunConfig
    from cai.launch import main as launch_main

    return launch_main(RLRunConfig, argv, run, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
