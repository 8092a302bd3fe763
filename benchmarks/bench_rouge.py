"""Time the Self-Instruct ROUGE-L filter: rouge-score's scorer vs cai.rouge.RougeIndex.

Run: python benchmarks/bench_rouge.py [--pool 1000 5000 10000] [--candidates 200]

The pool is synthetic but shaped like prompts: 8-30 words drawn with Zipf weights from a
~2000-word vocabulary of random syllables (so function words overlap a lot, as in real
text), and a fifth of the candidates are light edits of pool items (real near-duplicates).
The baseline scores every candidate against every pool item with `RougeScorer.score`, as
Self-Instruct does; it is run on a subsample of candidates and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rouge_score import rouge_scorer  # noqa: E402

from cai.self_instruct.rouge import RougeIndex, max_similarities  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fo", "gu", "he", "ji", "pa", "ze", "qu", "wo", "xi", "yo"]


def make_vocabulary(rng: random.Random, size: int = 2000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def make_prompt(rng: random.Random, vocabulary: list[str], weights: list[float]) -> str:
    words = rng.choices(vocabulary, weights=weights, k=rng.randint(8, 30))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(["?", ".", "?", ""])


def near_duplicate(rng: random.Random, text: str, vocabulary: list[str]) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


def build(pool_size: int, num_candidates: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocabulary = make_vocabulary(rng)
    rng.shuffle(vocabulary)
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    pool = [make_prompt(rng, vocabulary, weights) for _ in range(pool_size)]
    candidates = [near_duplicate(rng, rng.choice(pool), vocabulary) if rng.random() < 0.2 else make_prompt(rng, vocabulary, weights) for _ in range(num_candidates)]
    return pool, candidates


def baseline(pool: list[str], candidates: list[str]) -> list[float]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [max(scorer.score(item, candidate)["rougeL"].fmeasure for item in pool) for candidate in candidates]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, nargs="+", default=[1000, 5000, 10000], help="pool sizes to time")
    parser.add_argument("--candidates", type=int, default=200, help="candidates checked against the pool")
    parser.add_argument("--baseline-candidates", type=int, default=20, help="candidates the baseline really scores (then extrapolated)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sampled = min(args.baseline_candidates, args.candidates)
    print(
        f"{args.candidates} candidates per pool; baseline = RougeScorer.score on every pair, run on {sampled} "
        f"candidates and extrapolated x{args.candidates / sampled:.1f}; ours = RougeIndex.max_similarity (build time separate; any>=0.7 = the filter's early-stopping query)"
    )
    header = f"{'pool':>6}  {'baseline':>10}  {'build':>7}  {'ours':>8}  {'speed-up':>9}  {f'ours {args.workers}w':>8}  {'speed-up':>9}  {'any>=0.7':>8}  agree"
    print(f"cpus={os.cpu_count()}  load average before start={os.getloadavg()[0]:.2f} (other processes skew the 2-worker column)")
    print(header)
    print("-" * len(header))
    for pool_size in args.pool:
        pool, candidates = build(pool_size, args.candidates, args.seed)
        reference, base_time = timed(baseline, pool, candidates[:sampled])
        base_time *= args.candidates / sampled
        index, build_time = timed(RougeIndex, pool)
        serial, serial_time = timed(max_similarities, candidates, index)
        parallel, parallel_time = timed(max_similarities, candidates, index, num_workers=args.workers)
        _, any_time = timed(lambda index=index, candidates=candidates: [index.any_above(text, 0.7) for text in candidates])
        agree = parallel == serial and all(abs(score - expected) <= 1e-9 for (score, _), expected in zip(serial, reference))
        print(f"{pool_size:>6}  {base_time:>9.1f}s  {build_time:>6.2f}s  {serial_time:>7.3f}s  x{base_time / serial_time:>8.0f}  {parallel_time:>7.3f}s  x{base_time / parallel_time:>8.0f}  {any_time:>7.3f}s  {'yes' if agree else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
