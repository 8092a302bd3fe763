"""Generation throughput: cai's engine vs a plain `model.generate` loop vs transformers' pipeline.

Run: python benchmarks/bench_generation.py [--model embedded] [--prompts 64] [--max_new_tokens 48] [--batch_size 16]

All three decode the same mixed-length chat prompts (requests from examples/red_team.jsonl
and helpful.jsonl, interleaved, a third of them after one and a third after two earlier
exchanges from examples/gold_preferences.jsonl; their token lengths are printed) greedily with the same model
(the embedded SmolLM2-135M by default) and the same `max_new_tokens`, after one untimed
warm-up call. The plain loop is what a user writes first: one prompt at a time through
`model.generate`. The pipeline is `pipeline("text-generation", batch_size=...)` on the same
rendered texts. cai's engine pads left and groups prompts of similar length into batches
(`cai.generation.TransformersGenerator`). Each completion is checked equal to the plain
loop's: the loop's tokens up to the end of turn, decoded as the engine returns them (equal
text means equal tokens, barring two token sequences that spell the same text); the first
mismatches are shown. Tokens/s count the loop's tokens for all three. The last line prints
the ratios (goal, issue 12: >= 5x the plain loop and ahead of the pipeline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def chat_prompts(tokenizer, count: int) -> list[str]:
    """Red-team and helpful requests interleaved; request i follows i % 3 earlier exchanges (a gold
    prompt and its chosen reply), so lengths come in three tiers, as stage prompts do."""
    from cai.generation import render_chat

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (ROOT / "examples" / name).read_text().splitlines() if line.strip()]

    requests = [row["prompt"] for pair in zip(read("red_team.jsonl"), read("helpful.jsonl")) for row in pair][:count]
    history = [[{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["chosen"]}] for row in read("gold_preferences.jsonl")]
    conversations = []
    for index, request in enumerate(requests):
        earlier = [turn for k in range(index % 3) for turn in history[(2 * index + k) % len(history)]]
        conversations.append(earlier + [{"role": "user", "content": request}])
    return [render_chat(tokenizer, messages) for messages in conversations]


def plain_loop(model, tokenizer, texts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(generated[0, ids["input_ids"].shape[1] :].tolist())
    return out


def trim(tokens: list[int], tokenizer) -> list[int]:
    """Token ids up to (not including) the first EOS or pad, so padded and unpadded runs compare."""
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for index, token in enumerate(tokens):
        if token in stop:
            return tokens[:index]
    return tokens


def main(argv: list[str] | None = None) -> int:
    from cai.config import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model reference (hub id, directory, .gguf or embedded)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="compute precision, as the run setting `precision` (the recorded figures are fp32)")
    args = parser.parse_args(argv)

    import torch
    from transformers import pipeline

    from cai import models
    from cai.config import GenerationConfig
    from cai.generation import TransformersGenerator

    models.use_precision(args.precision)
    ref = models.resolve(args.model)
    tokenizer = models.load_tokenizer(ref)
    model = models.load_causal_lm(ref)
    models.sync_pad_token(model, tokenizer)
    texts = chat_prompts(tokenizer, args.prompts)
    lengths = sorted(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    plain_loop(model, tokenizer, texts[:1], 2)  # warm-up: first-call costs (allocator, kernels) are nobody's throughput

    start = time.perf_counter()
    loop_ids = plain_loop(model, tokenizer, texts, args.max_new_tokens)
    loop_seconds = time.perf_counter() - start

    engine = TransformersGenerator(model, tokenizer, GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens), show_progress=False)
    start = time.perf_counter()
    engine_texts = engine.generate(texts)
    engine_seconds = time.perf_counter() - start

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, batch_size=args.batch_size)
    start = time.perf_counter()
    piped = generator(texts, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False, pad_token_id=tokenizer.pad_token_id)
    pipeline_seconds = time.perf_counter() - start

    loop_texts = [tokenizer.decode(trim(ids, tokenizer), skip_special_tokens=True).strip() for ids in loop_ids]
    pipe_texts = [item[0]["generated_text"].strip() for item in piped]
    tokens = sum(len(trim(ids, tokenizer)) for ids in loop_ids)
    same_engine = sum(a == b for a, b in zip(engine_texts, loop_texts))
    same_pipe = sum(a == b for a, b in zip(pipe_texts, loop_texts))
    print(
        f"model={args.model}, {len(texts)} chat prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), greedy, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, torch threads={torch.get_num_threads()}"
    )
    print(f"{tokens} tokens generated by the plain loop (up to each end of turn)")
    print(f"plain loop   {loop_seconds:7.1f} s  {tokens / loop_seconds:7.1f} tokens/s")
    print(f"pipeline     {pipeline_seconds:7.1f} s  {tokens / pipeline_seconds:7.1f} tokens/s  identical to the loop: {same_pipe}/{len(texts)}")
    print(f"cai engine   {engine_seconds:7.1f} s  {tokens / engine_seconds:7.1f} tokens/s  identical to the loop: {same_engine}/{len(texts)}")
    for name, others in (("pipeline", pipe_texts), ("cai engine", engine_texts)):
        for index in [i for i, (a, b) in enumerate(zip(others, loop_texts)) if a != b][:3]:
            at = next((k for k, (x, y) in enumerate(zip(others[index], loop_texts[index])) if x != y), min(len(others[index]), len(loop_texts[index])))
            print(f"  {name} differs on prompt {index} from character {at}: {others[index][at : at + 40]!r} vs loop {loop_texts[index][at : at + 40]!r}")
    print(f"ratio: cai engine {loop_seconds / engine_seconds:.1f}x the plain loop, {pipeline_seconds / engine_seconds:.2f}x the pipeline (goal: >= 5x the loop, > 1x the pipeline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
