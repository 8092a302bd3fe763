"""Labeling throughput: cai's log-prob labelers vs judge-by-generation, on the same pairs and principles.

Run: python benchmarks/bench_labeling.py [--model embedded] [--pairs 64] [--principles 1] [--verdict_tokens 64] [--explain] [--batch_size 8]

The pairs are the first `--pairs` of examples/gold_preferences.jsonl, shown as the label
stage's gold audit shows them (`cai.feedback.gold.audit_labeler`: chosen first on even
pairs), so each labeler's gold accuracy comes with its speed. The feedback settings are the
demo's (configs/demo/rl.yaml: both orders, `--principles` drawn per comparison, the same
draw for every labeler). Three labelers, each through the label stage's own code path
(`cai.feedback.methods.label_comparisons`), each timed over all pairs after an untimed
warm-up:
- multiple_choice: the paper's judge, P("(A)") vs P("(B)") at the next token, one forward
  pass per prompt;
- likelihood_ratio: the demo's method, mean log p(response | principle) - log p(response),
  3 scored contexts per response with the balance principle;
- judge-by-generation: the multiple-choice judge with the same prompts, except that the
  feedback model writes its verdict (greedy, up to `--verdict_tokens`, cai's batched engine)
  and "(A)"/"(B)" is parsed from it, as most LLM-judge code does; an unparseable verdict
  counts as a tie. Only the reading of the letter changes (`option_scores_sharded` is
  swapped for generate-and-parse), so orders, principles, debiasing and ensembling are equal.
  Run batched (`--batch_size`, length-sorted: the strongest baseline) and one prompt at a
  time, as a judge calling a model per request does (NeMo's CAI example does so). With
  `--explain` the instruction asks for a short explanation before the letter (NeMo's example
  and MT-Bench-style judges ask for one), and the last letter written is the verdict.

Agreement is the share of pairs where two labelers prefer the same response, among pairs
neither ties. Prefix sharing: cai scores every prompt in full (no KV-cache reuse between
prompts); the tokens a prefix-sharing scorer would compute (each distinct token prefix once,
within a comparison and across all of them) are counted from the prompts actually scored.
The last line prints both labelers' speed against judge-by-generation (goal: >= 10x).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERDICT = (re.compile(r"\(([AB])\)"), re.compile(r"\b(?:[Rr]esponse|[Oo]ption|[Aa]nswer(?: is)?:?)\s*\(?([AB])\b"), re.compile(r"^\W*([AB])\b"))
EXPLAIN = "Explain in one or two sentences which response is better, then end with the letter of that option, (A) or (B)."


def verdict_p_a(text: str, *, last: bool = False) -> float | None:
    """1.0 for a written (A), 0.0 for (B), None when no letter can be read; `last`: the final mention (after an explanation)."""
    for pattern in VERDICT:
        found = [m.group(1) for m in pattern.finditer(text)]
        if found:
            return 1.0 if found[-1 if last else 0] == "A" else 0.0
    return None


def distinct_prefix_tokens(groups: list[list[list[int]]]) -> int:
    """Token positions a prefix-sharing scorer computes: each distinct prefix once per group (a trie's nodes)."""
    count = 0
    for sequences in groups:
        root: dict = {}
        for sequence in sequences:
            node = root
            for token in sequence:
                if token not in node:
                    node[token] = {}
                    count += 1
                node = node[token]
    return count


def sharing_line(name: str, groups: list[list[list[int]]]) -> str:
    scored = sum(len(s) for g in groups for s in g)
    within = distinct_prefix_tokens(groups)
    across = distinct_prefix_tokens([[s for g in groups for s in g]])
    return f"  {name:<18} scores {scored} tokens; shared prefixes once per comparison: {within} ({1 - within / scored:.0%} fewer), once across all: {across} ({1 - across / scored:.0%} fewer)"


def sides(records: list[dict]) -> list[int]:
    return [(r["p_gold"] > 0.5) - (r["p_gold"] < 0.5) for r in records]


def agreement(a: list[dict], b: list[dict]) -> str:
    both = [(x, y) for x, y in zip(sides(a), sides(b)) if x and y]
    return f"{sum(x == y for x, y in both) / len(both):.0%} of {len(both)} untied pairs" if both else "undefined (every pair tied)"


def main(argv: list[str] | None = None) -> int:
    from cai.config import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="feedback model reference (hub id, directory, .gguf or embedded)")
    parser.add_argument("--pairs", type=int, default=64, help="gold pairs judged (at most 100)")
    parser.add_argument("--principles", type=int, default=1, help="feedback.principles_per_comparison")
    parser.add_argument("--verdict_tokens", type=int, default=64, help="longest written verdict, in tokens")
    parser.add_argument("--explain", action="store_true", help="the written judge explains before its verdict (as NeMo's CAI example and MT-Bench-style judges ask)")
    parser.add_argument("--batch_size", type=int, default=8, help="feedback.batch_size (prompts per forward pass or generate call)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="compute precision, as the run setting `precision` (the recorded figures are fp32)")
    args = parser.parse_args(argv)

    import dataclasses

    import torch
    from accelerate import Accelerator

    from cai import models
    from cai.config import GenerationConfig, RLRunConfig, load_config
    from cai.constitution import load_constitution
    from cai.feedback import judge as judge_module
    from cai.feedback import methods as methods_module
    from cai.feedback.gold import audit_labeler, read_gold
    from cai.feedback.judge import ANSWER_INSTRUCTION, ANSWER_PREFIX
    from cai.generation import TransformersGenerator, generate_sharded, render_chat
    from cai.launch import quiet_libraries

    quiet_libraries()
    config = load_config(RLRunConfig, ROOT / "configs/demo/rl.yaml", [f"feedback.principles_per_comparison={args.principles}", f"feedback.batch_size={args.batch_size}"])
    constitution = load_constitution(ROOT / config.constitution)
    pairs = read_gold(ROOT / "examples/gold_preferences.jsonl")[: args.pairs]
    accelerator = Accelerator()
    models.use_precision(args.precision)
    ref = models.resolve(args.model, setting="--model")
    tokenizer = models.load_tokenizer(ref, padding_side="left")
    model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
    models.sync_pad_token(model, tokenizer)

    scored: dict[str, list[list[int]]] = {"multiple_choice": [], "likelihood_ratio": []}  # the token sequences each labeler scored, in order
    verdicts: dict[int, list[str]] = {}  # per generation batch size: the verdicts of its last (timed) call
    real_option_scores = judge_module.option_scores_sharded
    real_logprobs = methods_module.completion_logprobs_sharded

    def option_scores(scorer, texts, accelerator):
        scored["multiple_choice"] += scorer.encode(texts)
        return real_option_scores(scorer, texts, accelerator)

    def completion_logprobs(model, tokenizer, contexts, completions, **kwargs):
        scored["likelihood_ratio"] += [tokenizer(render_chat(tokenizer, c), add_special_tokens=False)["input_ids"] + tokenizer(t, add_special_tokens=False)["input_ids"] for c, t in zip(contexts, completions)]
        return real_logprobs(model, tokenizer, contexts, completions, **kwargs)

    def written_verdicts(batch_size: int):
        """Generate-and-parse in place of reading P("(A)"): the same prompts without our answer prefix."""
        writer = TransformersGenerator(model, tokenizer, GenerationConfig(batch_size=batch_size, max_new_tokens=args.verdict_tokens, max_prompt_length=config.feedback.max_length), show_progress=False)

        def scores(scorer, texts, accelerator):
            prompts = [t.removesuffix(ANSWER_PREFIX) for t in texts]
            if args.explain:
                prompts = [p.replace(ANSWER_INSTRUCTION, EXPLAIN) for p in prompts]
            written = generate_sharded(writer, prompts, accelerator)
            verdicts[batch_size] = written
            return [0.5 if (p := verdict_p_a(w, last=args.explain)) is None else p for w in written]

        return scores

    labelers = {
        "multiple_choice": ("multiple_choice", {judge_module: {"option_scores_sharded": option_scores}}),
        "likelihood_ratio": ("likelihood_ratio", {methods_module: {"completion_logprobs_sharded": completion_logprobs}}),
        "judge-by-generation, batched": ("multiple_choice", {judge_module: {"option_scores_sharded": written_verdicts(args.batch_size)}}),
        "judge-by-generation, 1 at a time": ("multiple_choice", {judge_module: {"option_scores_sharded": written_verdicts(1)}}),
    }
    results = {}
    for name, (method, patches) in labelers.items():
        settings = dataclasses.replace(config.feedback, method=method)

        def label(comparisons, settings=settings):
            return methods_module.label_comparisons(model, tokenizer, comparisons, constitution, settings, accelerator, seed=config.seed, generation=config.generation)

        with ExitStack() as stack:
            for module, names in patches.items():
                for attribute, replacement in names.items():
                    stack.enter_context(mock.patch.object(module, attribute, replacement))
            audit_labeler(label, pairs[:1], method=method)  # warm-up, untimed
            scored.get(name, []).clear()
            start = time.perf_counter()
            metrics, records = audit_labeler(label, pairs, method=method)
            seconds = time.perf_counter() - start
        results[name] = (seconds, metrics, records)

    generated, one_by_one = results["judge-by-generation, batched"], results["judge-by-generation, 1 at a time"]
    written = verdicts[args.batch_size]
    unparsed = sum(verdict_p_a(v, last=args.explain) is None for v in written)
    verdict_tokens = sum(len(tokenizer(v, add_special_tokens=False)["input_ids"]) for v in written) / len(written)
    print(
        f"feedback model={args.model}, {len(pairs)} gold pairs, {args.principles} principle(s) per comparison (+ the balance principle for likelihood_ratio), "
        f"both orders, batch_size={args.batch_size}, written verdicts {'explained' if args.explain else 'as asked (the letter)'}, torch threads={torch.get_num_threads()}"
    )
    for name, (seconds, metrics, records) in results.items():
        ties = sides(records).count(0)
        print(f"{name:<34} {seconds:7.1f} s  {len(pairs) / seconds:6.2f} comparisons/s  gold accuracy {metrics['accuracy']:.0%}  ties {ties}")
    print(f"judge-by-generation wrote {len(written)} verdicts of {verdict_tokens:.1f} tokens on average (max {args.verdict_tokens}), {unparsed} without a readable (A)/(B); e.g. {written[0][:60]!r}")
    print(f"batched and one-at-a-time verdicts identical: {sum(a == b for a, b in zip(written, verdicts[1]))}/{len(written)}")
    for name in ("multiple_choice", "likelihood_ratio"):
        print(f"agreement {name} vs judge-by-generation: {agreement(results[name][2], generated[2])}")
    print(f"agreement multiple_choice vs likelihood_ratio: {agreement(results['multiple_choice'][2], results['likelihood_ratio'][2])}")
    print("prefix sharing: cai runs every scored prompt in full (use_cache=False, no KV reuse between prompts); a prefix-sharing scorer would compute")
    for name, sequences in scored.items():  # per comparison: 2 orders x principles, or 2 responses x (baseline + principles)
        sizes = [2 * len(r["principle_ids"]) + (2 if name == "likelihood_ratio" else 0) for r in results[name][2]]
        if sum(sizes) != len(sequences):
            raise RuntimeError(f"{name}: {len(sequences)} scored sequences, expected {sum(sizes)}; the labeler's prompt layout changed, update this count")
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        print(sharing_line(name, [sequences[at : at + size] for at, size in zip(starts, sizes)]))
    speed = {name: (generated[0] / results[name][0], one_by_one[0] / results[name][0]) for name in ("multiple_choice", "likelihood_ratio")}
    print(
        f"ratio: multiple_choice {speed['multiple_choice'][0]:.1f}x, likelihood_ratio {speed['likelihood_ratio'][0]:.1f}x the comparisons/s of batched judge-by-generation "
        f"({speed['multiple_choice'][1]:.1f}x, {speed['likelihood_ratio'][1]:.1f}x of one prompt at a time) (goal: >= 10x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
