"""`python -m cai` (or `cai`): tools around the stage scripts.

    python -m cai validate constitutions/default.yaml      # a constitution
    python -m cai validate configs/demo/sl.yaml            # a stage config (and its constitution)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cai.errors import CaiError, exit_on_user_error


def config_classes() -> dict[str, type]:
    """Stage name -> its config class; a config file is matched by its name or launch comment."""
    from cai.config import RLRunConfig, SLRunConfig

    return {"sl": SLRunConfig, "rl": RLRunConfig}


def validate(paths: list[str], kind: str | None) -> int:
    from cai.config import load_config, read_yaml_mapping
    from cai.constitution import load_constitution

    for path in paths:
        data = read_yaml_mapping(path, what="YAML")
        detected = kind or detect_kind(Path(path), data)
        if detected == "constitution":
            c = load_constitution(path)
            print(f"{path}: ok — constitution {c.name!r} v{c.version}, {len(c.critiques)} critique/revision pairs, "
                  f"{len(c.preferences)} preference questions, {len(c.few_shot)} demonstrations, hash {c.content_hash}")
            continue
        classes = config_classes()
        if detected not in classes:
            raise CaiError(f"{path}: cannot tell what this file configures; pass --kind ({', '.join(['constitution', *classes])})")
        config = load_config(classes[detected], path)
        constitution = getattr(config, "constitution", None)
        if constitution and Path(constitution).is_file():
            load_constitution(constitution)
        print(f"{path}: ok — {detected} config")
    return 0


def detect_kind(path: Path, data: dict) -> str | None:
    if "critiques" in data or "preferences" in data:
        return "constitution"
    if path.stem in config_classes():
        return path.stem
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
    check.add_argument("--kind", choices=["constitution", *config_classes()], default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return exit_on_user_error(lambda: validate(args.paths, args.kind))
    return 2


if __name__ == "__main__":
    sys.exit(main())
