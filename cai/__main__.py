"""`python -m cai` (or `cai`): tools around the stage scripts.

    python -m cai validate constitutions/default.yaml      # a constitution
    python -m cai validate configs/demo/sl.yaml            # a stage config (and its constitution)
    python -m cai validate --explain configs/rl.yaml       # ... then every setting: default, choices or range, doc
    python -m cai eval --models base=embedded sl=runs/demo/sl_model rl=runs/demo/rl_model \
        --prompts examples/eval_red_team.jsonl --helpful examples/eval_helpful.jsonl   # -> runs/eval/report
    accelerate launch -m cai eval --models ...             # the same, generation and judging over N processes
    python -m cai report runs/demo                         # rebuild <run>/report/ from files (no torch)
    python -m cai serve-reward runs/demo/reward_model --port 5000   # POST /get_reward (OpenRLHF's --remote_rm_url)
    python -m cai push runs/demo --repo_id me/cai-demo --dry_run   # write model/dataset cards, list what would be uploaded
    python -m cai audit-feedback --config configs/demo/rl.yaml feedback.method=pointwise   # a labeler's gold-set accuracy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cai.errors import CaiError, exit_on_user_error


def config_classes() -> dict[str, type]:
    """Launcher name -> its config class; a config file is matched by its name or launch comment."""
    from cai.config import PromptsRunConfig, RLRunConfig, SLRunConfig

    return {"sl": SLRunConfig, "rl": RLRunConfig, "grow": PromptsRunConfig}


KIND_ALIASES = {"prompts": "grow"}  # the Self-Instruct launcher was cai/prompts.py; configs/prompts.yaml keeps its name


def validate(paths: list[str], kind: str | None, *, explain: bool = False) -> int:
    from cai.config import explain as explain_settings
    from cai.config import load_config, read_yaml_mapping
    from cai.constitution import load_constitution

    for path in paths:
        data = read_yaml_mapping(path, what="YAML")
        detected = KIND_ALIASES.get(kind, kind) if kind else detect_kind(Path(path), data)
        if detected == "constitution":
            c = load_constitution(path)
            print(f"{path}: ok — constitution {c.name!r} v{c.version}, {len(c.critiques)} critique/revision pairs, {len(c.preferences)} preference questions, {len(c.few_shot)} demonstrations, hash {c.content_hash}")
            continue
        classes = config_classes()
        if detected not in classes:
            raise CaiError(f"{path}: cannot tell what this file configures; pass --kind ({', '.join(['constitution', *classes])})")
        config = load_config(classes[detected], path)
        constitution = getattr(config, "constitution", None)
        if constitution and Path(constitution).is_file():
            load_constitution(constitution)
        print(f"{path}: ok — {detected} config")
        if explain:
            print("\n".join(explain_settings(classes[detected])))
    return 0


def detect_kind(path: Path, data: dict) -> str | None:
    if "critiques" in data or "preferences" in data:
        return "constitution"
    stem = KIND_ALIASES.get(path.stem, path.stem)
    if stem in config_classes():
        return stem
    header = path.read_text(encoding="utf-8").split("\n", 3)[:3]
    for name in config_classes():
        if any(f"cai/{name}.py" in line for line in header):
            return name
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI tools (stage scripts: cai/sl.py, cai/rl.py)")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check constitutions and stage configs without running anything")
    check.add_argument("paths", nargs="+")
    check.add_argument("--kind", choices=["constitution", *config_classes(), *KIND_ALIASES], default=None)
    check.add_argument("--explain", action="store_true", help="after validating a config, print every setting with its default, choices or range and doc")
    add_eval_parser(commands)
    report = commands.add_parser("report", help="rebuild <run_dir>/report/ (report.md and plots) from a run directory")
    report.add_argument("run_dir")
    audit = commands.add_parser("audit-feedback", help="measure a feedback setting on the gold preference set: accuracy with a 95%% interval, per kind, position bias, calibration")
    audit.add_argument("--config", required=True, help="an RL config (e.g. configs/demo/rl.yaml); its feedback.* settings and model are audited")
    audit.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as for cai/rl.py (e.g. feedback.method=likelihood_ratio)")
    from cai.cards import add_parser as add_push_parser
    from cai.reward.service import add_parser as add_serve_parser

    add_serve_parser(commands)
    add_push_parser(commands)
    return parser


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """`cai eval`: the RL run's eval stage on any models; the flags mirror the `eval.*` settings."""
    from cai.config import PRECISIONS, EvalConfig

    d = EvalConfig()
    ev = commands.add_parser("eval", help="compare models on held-out prompts (scores, AI-judged Elo, refusal rates) and write a report")
    ev.add_argument("--models", nargs="+", required=True, metavar="NAME=REF", help="models to compare: name=reference (hub id, directory, .gguf or embedded)")
    ev.add_argument("--prompts", default=d.red_team, help="red-team prompt file (held out from training)")
    ev.add_argument("--helpful", default=d.helpful, help="helpful prompt file, for over-refusal and helpfulness Elo")
    ev.add_argument("--benign", default=None, help=f"benign-but-alarming prompt file, for over-refusal (e.g. {d.benign})")
    ev.add_argument("--max_red_team", type=int, default=None)
    ev.add_argument("--max_helpful", type=int, default=None)
    ev.add_argument("--output_dir", default="runs/eval")
    ev.add_argument("--constitution", default="constitutions/default.yaml", help="its preference principles guide the judge")
    ev.add_argument("--reward_model", default=None, help="reward model to score responses with (default: the reward_model/ beside a compared model, if any)")
    ev.add_argument("--no_reward_model", action="store_true", help="score with no reward model, even if one is found")
    ev.add_argument("--judge", action=argparse.BooleanOptionalAction, default=d.judge, help="pairwise AI-judge comparisons and Elo")
    ev.add_argument("--judge_model", default=None, help="feedback model that judges (default: the model named base, else the first)")
    ev.add_argument("--judge_principles", nargs="*", default=None, metavar="ID", help="preference principle ids (default: all)")
    ev.add_argument("--principles_per_comparison", type=int, default=2)
    ev.add_argument("--refusal_judge", action=argparse.BooleanOptionalAction, default=d.refusal_judge, help="also ask the judge whether each response refuses")
    ev.add_argument("--refusal_labels", default=d.refusal_labels, help="labelled responses to measure the refusal detectors on")
    ev.add_argument("--bootstrap_rounds", type=int, default=d.bootstrap_rounds)
    ev.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
    ev.add_argument("--batch_size", type=int, default=16)
    ev.add_argument("--backend", default="transformers", help="generation backend: transformers or vllm")
    ev.add_argument("--show_examples", type=int, default=d.show_examples)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--precision", default="auto", choices=PRECISIONS, help="compute precision (auto: bf16 where the GPU or CPU has bf16 instructions)")
    ev.add_argument("--force", action="store_true", help="redo the evaluation in output_dir (old outputs are kept aside)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return exit_on_user_error(lambda: validate(args.paths, args.kind, explain=args.explain))
    if args.command == "eval":
        return exit_on_user_error(lambda: run_eval_command(args))
    if args.command == "audit-feedback":
        return exit_on_user_error(lambda: run_audit_command(["--config", args.config, *args.overrides]))
    if args.command == "report":
        return exit_on_user_error(lambda: run_report_command(args.run_dir))
    if args.command == "serve-reward":
        return exit_on_user_error(lambda: run_serve_command(args))
    if args.command == "push":
        from cai.cards import push_command

        return exit_on_user_error(lambda: push_command(args))
    return 2


def run_eval_command(args: argparse.Namespace) -> int:
    from cai.evaluation.stage import eval_command

    return eval_command(args)


def run_audit_command(settings: list[str]) -> int:
    from cai.feedback.gold import audit_command

    return audit_command(settings)


def run_report_command(run_dir: str) -> int:
    from cai.evaluation.report import report_command

    return report_command(run_dir)


def run_serve_command(args: argparse.Namespace) -> int:
    from cai.reward.service import serve_command

    return serve_command(args)


if __name__ == "__main__":
    sys.exit(main())
