"""RLAIF: sample response pairs from the SL model, label them with AI feedback under the
constitution, train a reward model on the labels, and optimise the policy against it.

    accelerate launch cai/rl.py --config configs/rl.yaml                   # sl_model from an SL run
    accelerate launch cai/rl.py --config configs/demo/rl.yaml              # embedded, CPU, minutes
    accelerate launch cai/rl.py --config configs/rl.yaml stages=label,reward
    accelerate launch cai/rl.py --config configs/rl.yaml rl.algorithm=dpo  # or grpo, rloo

Stages: sample, label, reward, ppo (the `ppo` stage trains with `rl.algorithm`), eval (held-out
scores, Elo, refusal rates, then the report in <output_dir>/report/).
Overrides are dotted key=value pairs after --config.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # run as a file: import the package, not its modules


def run(config, accelerator) -> None:
    from cai.config import check_stages
    from cai.constitution import load_constitution
    from cai.launch import run_stages
    from cai.rl_stages import STAGES, run_sample
    from cai.run_store import RunStore

    check_stages(list(config.stages), list(STAGES))
    if "ppo" in config.stages:
        from cai.policy_optimization import check_algorithm

        check_algorithm(config)  # a typo should not surface only after sample, label and reward ran
    constitution = load_constitution(config.constitution)
    store = RunStore(config.output_dir, is_main=accelerator.is_main_process)
    refs = {"sl_model": config.policy_reference()}
    store.begin(config, constitution=constitution.manifest_entry(), models=refs, script="rl")

    def label() -> None:
        from cai.feedback import run_label

        run_label(config, store, accelerator, constitution)

    def reward() -> None:
        from cai.reward import run_reward

        run_reward(config, store, accelerator)

    def policy() -> None:
        from cai.policy_optimization import run_policy

        run_policy(config, store, accelerator)

    def evaluation() -> None:
        from cai.evaluation import run_eval

        run_eval(config, store, accelerator, constitution)

    run_stages(config, store, accelerator, STAGES, {"sample": lambda: run_sample(config, store, accelerator), "label": label, "reward": reward, "ppo": policy, "eval": evaluation}, tag="rl")


def main(argv: list[str] | None = None) -> int:
    from cai.config import RLRunConfig
    from cai.launch import main as launch_main

    return launch_main(RLRunConfig, argv, run, usage=__doc__)


if __name__ == "__main__":
    sys.exit(main())
