"""Batched generation on the tiny model: batching is invisible, stops cut, sampling is seeded."""

from __future__ import annotations

import pytest

from cai import models
from cai.config import GenerationConfig
from cai.generation import TransformersGenerator, cut_at_stop, render_chat, sample_seed, with_settings

QUESTIONS = ["hi", "How do I bake bread at home without yeast?", "Name a colour.", "Tell me a long story about a dragon and a knight."]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    ref = models.resolve(str(tiny_model_dir))
    tokenizer = models.load_tokenizer(ref)
    model = models.load_causal_lm(ref)
    models.sync_pad_token(model, tokenizer)
    return model, tokenizer


def prompts(tokenizer):
    return [render_chat(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_tokenizer_pads_left_with_a_token_that_is_not_eos(loaded):
    _, tokenizer = loaded
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_rendered_chat_has_a_single_bos(loaded):
    _, tokenizer = loaded
    text = prompts(tokenizer)[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids[1] != start


def test_batched_greedy_equals_one_at_a_time(loaded):
    model, tokenizer = loaded
    texts = prompts(tokenizer)
    batched = TransformersGenerator(model, tokenizer, GenerationConfig(batch_size=4, max_new_tokens=12), show_progress=False).generate(texts)
    single = TransformersGenerator(model, tokenizer, GenerationConfig(batch_size=1, max_new_tokens=12), show_progress=False).generate(texts)
    assert batched == single
    assert all(batched) and len(set(batched)) > 1


def test_a_sample_depends_only_on_its_seed_not_on_batching_or_neighbours(loaded):
    model, tokenizer = loaded
    texts = prompts(tokenizer)
    seeds = [sample_seed(1, f"p{i}:sample0") for i in range(len(texts))]
    generator = TransformersGenerator(model, tokenizer, GenerationConfig(batch_size=4, max_new_tokens=10, temperature=1.0), seed=1, show_progress=False)
    whole = generator.generate(texts, seeds=seeds)
    one_by_one = with_settings(generator, GenerationConfig(batch_size=1, max_new_tokens=10, temperature=1.0)).generate(texts, seeds=seeds)
    reversed_pairs = with_settings(generator, GenerationConfig(batch_size=2, max_new_tokens=10, temperature=1.0)).generate(texts[::-1], seeds=seeds[::-1])
    assert whole == one_by_one == reversed_pairs[::-1]
    # the same prompt with other seeds gives other samples; sampling is really on
    repeated = generator.generate([texts[1]] * 4, seeds=[sample_seed(1, f"p1:sample{k}") for k in range(4)])
    assert len(set(repeated)) > 1
    assert generator.generate(texts, seeds=[sample_seed(2, f"p{i}:sample0") for i in range(len(texts))]) != whole


def test_row_sampler_follows_temperature_and_top_p():
    import torch

    from cai.generation import RowSampler

    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 2)
    near_greedy = RowSampler([1, 2], temperature=1e-4, top_p=1.0)(None, scores)
    assert near_greedy.argmax(-1).tolist() == [0, 0] and torch.isinf(near_greedy[:, 1:]).all()
    # top_p=0.5 keeps only the most likely token (p=0.64) whatever the seed
    picks = {int(RowSampler([seed], temperature=1.0, top_p=0.5)(None, scores[:1]).argmax()) for seed in range(20)}
    assert picks == {0}
    picks = {int(RowSampler([seed], temperature=1.0, top_p=1.0)(None, scores[:1]).argmax()) for seed in range(40)}
    assert len(picks) >= 3


def test_stop_strings_end_generation(loaded):
    model, tokenizer = loaded
    texts = prompts(tokenizer)[:1]
    free = TransformersGenerator(model, tokenizer, GenerationConfig(max_new_tokens=12), show_progress=False).generate(texts)[0]
    words = free.split()
    assert len(words) >= 3
    stop = words[1]
    stopped = TransformersGenerator(model, tokenizer, GenerationConfig(max_new_tokens=12, stop=[stop]), show_progress=False).generate(texts)[0]
    assert stop not in stopped and free.startswith(stopped)


def test_cut_at_stop():
    assert cut_at_stop("abc\nUser: x", ["\nUser:"]) == "abc"
    assert cut_at_stop("abc", ["zz"]) == "abc"
    assert cut_at_stop("a.b.c", [".", "b"]) == "a"


def test_scored_ids_match_what_a_rollout_builds(loaded):
    from cai.chat_format import prompt_ids, scored_ids

    _, tokenizer = loaded
    ids = scored_ids(tokenizer, "What is 2+2?", "It is 4.")
    head = prompt_ids(tokenizer, "What is 2+2?")
    assert ids[: len(head)] == head
    assert ids[-1] == tokenizer.eos_token_id and ids[-2] != tokenizer.eos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant: no double BOS
    assert scored_ids(tokenizer, "What is 2+2?", "It is 4.<|im_end|>") == ids
    short = scored_ids(tokenizer, "What is 2+2? " * 50, "It is 4.", max_length=16)
    assert len(short) == 16 and short[-1] == tokenizer.eos_token_id
