"""Scaling: SL generation with 1 vs 2 accelerate processes, and each stage's cost at 1x, 2x, 4x the demo size.

Run: python benchmarks/bench_scaling.py [--model embedded] [--parts processes sizes] [--process_size 1] [--sizes 1 2 4] [--no-scale_episodes] [--sl_set KEY=VALUE ...] [--rl_set KEY=VALUE ...]

Every run is a real launch, as users start one (`accelerate launch ... cai/sl.py` / `cai/rl.py`
with the demo configs, in a scratch output_dir), with stdout unbuffered: a stage starts when the
launcher prints "[sl] <stage>: running" and ends when the next one starts or the launch exits,
so a stage's time includes its model loading, and the first stage of a launch also the
process start-up (printed apart as "start-up").

- processes: the SL `generate` stage on `--process_size` x the demo's prompts (default: the
  demo's 48 red-team + 60 helpful), with 1 process (`--cpu`) and with 2 (`--multi_gpu` with
  ACCELERATE_USE_CPU=true: accelerate starts a single process for `--cpu --num_processes 2`, as
  tests/helpers.py notes). One process uses every core; two get half each (OMP_NUM_THREADS),
  unless OMP_NUM_THREADS is already set. Prompts/s of the stage, and whether the two runs'
  records (sl_data and sl_rejected) are identical.
- sizes: the whole demo (SL: generate, sft; RL: sample, label, reward, policy, eval) at each
  multiple of its size: SL and RL prompt counts (prompts.max_red_team/max_helpful) and
  ppo.total_episodes scaled (`--no-scale_episodes` keeps the demo's 32); the gold audit, held-out reward prompts and the eval sets stay as
  they are (they measure the result, not the data). Counts are read back from the manifest:
  the example prompt files hold 180 red-team and 186 helpful prompts, so 4x the SL demo is
  capped there.

`--sl_set`/`--rl_set` add overrides to every SL/RL launch (to shrink a smoke run). The last
line prints the 2-process speed-up and how the whole demo's time grew with its size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STARTED = re.compile(r"^\[(?:sl|rl)\] (\w+): running")


def launch(script: str, output_dir: Path, overrides: list[str], *, processes: int = 1, threads: int | None = None) -> dict[str, float]:
    """One launch of cai/<script> on a demo config; seconds per stage (plus "start-up"), from the launcher's lines."""
    from tests.helpers import accelerate_command

    config = ROOT / "configs" / "demo" / script.replace(".py", ".yaml")
    command, extra = accelerate_command(str(ROOT / "cai" / script), "--config", str(config), f"output_dir={output_dir}", *overrides, processes=processes, quiet=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    marks = [("start-up", time.perf_counter())]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in process.stdout:
            found = STARTED.match(line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
        if process.wait() != 0:
            errors.seek(0)
            raise SystemExit(f"{script} {' '.join(overrides)} failed:\n{errors.read()[-3000:]}")
    marks.append(("", time.perf_counter()))
    return {name: end - start for (name, start), (_, end) in zip(marks, marks[1:])}


def records(run: Path) -> list[list[dict]]:
    from cai.layout import SL_DATA, SL_REJECTED

    return [[json.loads(line) for path in sorted((run / name).glob("shard-*.jsonl")) for line in path.read_text().splitlines()] for name in (SL_DATA, SL_REJECTED)]


def scaled(base: dict[str, int], factor: float) -> list[str]:
    return [f"{key}={max(1, round(value * factor))}" for key, value in base.items()]


def processes_part(args, scratch: Path, sl_base: dict[str, int]) -> tuple[str, list[str]]:
    cores = os.cpu_count() or 1
    overrides = ["stages=generate", f"model={args.model}", *scaled(sl_base, args.process_size), *args.sl_set]
    times, runs = {}, {}
    for processes in (1, 2):
        runs[processes] = scratch / f"processes-{processes}"
        times[processes] = launch("sl.py", runs[processes], overrides, processes=processes, threads=max(1, cores // processes))
    manifest = json.loads((runs[1] / "manifest.json").read_text())["stages"]["generate"]
    prompts = manifest["red_team"] + manifest["helpful"]
    same = records(runs[1]) == records(runs[2])
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [f"SL generate, {prompts} prompts ({manifest['red_team']} red-team, {manifest['helpful']} helpful), {cores} cores, threads per process: " + (f"{threads} (OMP_NUM_THREADS)" if threads else f"{cores} vs {max(1, cores // 2)}")]
    for processes in (1, 2):
        stage = times[processes]["generate"]
        label = f"{processes} process{'es' if processes > 1 else ''}:"
        lines.append(f"  {label:<13} generate {stage:7.1f} s  {prompts / stage:6.3f} prompts/s  (start-up {times[processes]['start-up']:.1f} s)")
    lines.append(f"  records identical (sl_data, sl_rejected): {'yes' if same else 'NO'}")
    return "\n".join(lines), [f"2 processes {times[1]['generate'] / times[2]['generate']:.2f}x the prompts/s of 1 (records {'identical' if same else 'DIFFER'})"]


def sizes_part(args, scratch: Path, sl_base: dict[str, int], rl_base: dict[str, int]) -> tuple[str, list[str]]:
    columns = {}
    for factor in args.sizes:
        run = scratch / f"size-{factor:g}"
        sl = launch("sl.py", run, [f"model={args.model}", *scaled(sl_base, factor), *args.sl_set])
        rl = launch("rl.py", run, [*scaled(rl_base, factor), *args.rl_set])
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        counts = {
            "SL prompts": stages["generate"]["red_team"] + stages["generate"]["helpful"],
            "RL prompts": stages["sample"]["prompts"],
            "comparisons": stages["label"]["comparisons"],
            "PPO episodes": max(1, round(rl_base["ppo.total_episodes"] * factor)) if "ppo.total_episodes" in rl_base else args.demo_episodes,
        }
        columns[factor] = ({"sl start-up": sl.pop("start-up"), **sl, "rl start-up": rl.pop("start-up"), **rl}, counts)
    names = list(next(iter(columns.values()))[0])
    header = f"{'stage':<16}" + "".join(f"{f'{factor:g}x demo':>14}" for factor in columns)
    lines = [f"demo stages at each size, seconds (model={args.model})", header]
    for name in next(iter(columns.values()))[1]:
        lines.append(f"{name:<16}" + "".join(f"{counts[name]:>14}" for _, counts in columns.values()))
    for name in names:
        lines.append(f"{name:<16}" + "".join(f"{times.get(name, 0.0):>14.1f}" for times, _ in columns.values()))
    totals = {factor: sum(times.values()) for factor, (times, _) in columns.items()}
    lines.append(f"{'total':<16}" + "".join(f"{total:>14.1f}" for total in totals.values()))
    smallest = min(totals)
    growth = ", ".join(f"{factor:g}x size {totals[factor] / totals[smallest]:.2f}x time" for factor in totals if factor != smallest)
    return "\n".join(lines), [f"whole demo: {growth} (vs {smallest:g}x)"] if growth else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="SL base model reference (hub id, directory, .gguf or embedded)")
    parser.add_argument("--parts", nargs="+", choices=("processes", "sizes"), default=["processes", "sizes"])
    parser.add_argument("--process_size", type=float, default=1.0, help="multiple of the demo's SL prompts for the 1 vs 2 process runs")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="multiples of the demo size")
    parser.add_argument("--scale_episodes", dest="scale_episodes", action=argparse.BooleanOptionalAction, default=True, help="scale ppo.total_episodes with the size too")
    parser.add_argument("--sl_set", dest="sl_set", action="append", default=[], metavar="KEY=VALUE", help="override for every SL launch (repeatable)")
    parser.add_argument("--rl_set", dest="rl_set", action="append", default=[], metavar="KEY=VALUE", help="override for every RL launch (repeatable)")
    args = parser.parse_args()

    from cai.config import RLRunConfig, SLRunConfig, load_config

    sl_demo = load_config(SLRunConfig, ROOT / "configs/demo/sl.yaml")
    rl_demo = load_config(RLRunConfig, ROOT / "configs/demo/rl.yaml")
    sl_base = {"prompts.max_red_team": sl_demo.prompts.max_red_team, "prompts.max_helpful": sl_demo.prompts.max_helpful}
    rl_base = {"prompts.max_red_team": rl_demo.prompts.max_red_team, "prompts.max_helpful": rl_demo.prompts.max_helpful}
    if args.scale_episodes:
        rl_base["ppo.total_episodes"] = rl_demo.ppo.total_episodes
    args.demo_episodes = rl_demo.ppo.total_episodes
    sections, ratios = [], []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch:
        if "processes" in args.parts:
            text, found = processes_part(args, Path(scratch), sl_base)
            sections.append(text)
            ratios += found
        if "sizes" in args.parts:
            text, found = sizes_part(args, Path(scratch), sl_base, rl_base)
            sections.append(text)
            ratios += found
    print("\n".join(sections))
    print("ratio: " + ("; ".join(ratios) or "nothing to compare (one size, no process run)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
