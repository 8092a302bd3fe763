"""cai.self_instruct.rouge against the reference `rouge_score` implementation, on hand-made and seeded random texts."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as reference_tokenize

from cai.errors import CaiError
from cai.self_instruct.rouge import RougeIndex, max_similarities, rouge_l, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
WORDS = ["how", "do", "I", "make", "a", "the", "bomb", "Cake", "steal", "car", "42", "x2", "fast"]
DECOR = ["", "", "", "?", ".", ",", "!", "'s", "-", "...", "\u00e9", "\u212a"]


def reference(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def random_text(rng: random.Random) -> str:
    """Short texts from a tiny vocabulary so overlaps are common; some empty, some pure punctuation."""
    roll = rng.random()
    if roll < 0.04:
        return ""
    if roll < 0.07:
        return rng.choice(["?!", " -- ", "...", "   "])
    words = []
    for _ in range(rng.randint(1, 12)):
        word = rng.choice(WORDS)
        word = word.upper() if rng.random() < 0.1 else word
        words.append(rng.choice(DECOR) + word + rng.choice(DECOR) if rng.random() < 0.3 else word)
    return rng.choice([" ", "  ", "\t"]).join(words)


def brute_force(pool: list[str], candidate: str) -> tuple[float, int]:
    scores = [reference(item, candidate) for item in pool]
    best = max(scores, default=0.0)
    return (0.0, -1) if best == 0.0 else (best, scores.index(best))


@pytest.mark.parametrize(
    "text",
    ["", "  ", "Hello, World!", "don't STOP-me now 42x", "caf\u00e9 na\u00efve \u212aelvin", "tab\tand\nnewline", "a_b c__d"],
)
def test_tokenize_matches_rouge_score(text):
    assert tokenize(text) == reference_tokenize.tokenize(text, None)


def test_rouge_l_hand_computed_values():
    assert rouge_l("the cat sat", "the cat") == pytest.approx(0.8)  # LCS 2: P=1, R=2/3
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)  # LCS 1 of 4 and 4
    assert rouge_l("How do I?", "how DO i") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("?!", "?!") == 0.0
    assert rouge_l("cats", "dogs") == 0.0


def test_rouge_l_equals_rouge_score_on_random_strings():
    rng = random.Random(1234)
    pairs = [(random_text(rng), random_text(rng)) for _ in range(400)]
    nonzero = 0
    for a, b in pairs:
        expected = reference(a, b)
        assert abs(rouge_l(a, b) - expected) <= 1e-9, (a, b)
        nonzero += expected > 0
    assert nonzero > 200  # the vocabulary is small enough that most pairs overlap


@pytest.fixture(scope="module")
def random_pool() -> tuple[list[str], list[str]]:
    rng = random.Random(99)
    pool = [random_text(rng) for _ in range(150)]
    candidates = [random_text(rng) for _ in range(120)] + pool[:5]
    return pool, candidates


def test_index_max_similarity_equals_brute_force(random_pool):
    pool, candidates = random_pool
    index = RougeIndex(pool)
    for candidate in candidates:
        score, item = index.max_similarity(candidate)
        expected_score, expected_item = brute_force(pool, candidate)
        assert abs(score - expected_score) <= 1e-9, candidate
        assert item == expected_item, candidate


def test_index_any_above_agrees_with_brute_force(random_pool):
    pool, candidates = random_pool
    index = RougeIndex(pool)
    fired = 0
    for threshold in (0.3, 0.5, 0.7, 0.9, 1.0):
        for candidate in candidates:
            expected = any(reference(item, candidate) >= threshold for item in pool)
            assert index.any_above(candidate, threshold) == expected, (candidate, threshold)
            fired += expected
    assert 0 < fired < 5 * len(candidates)


def test_index_grows_and_ties_go_to_the_lowest_index():
    index = RougeIndex(["write a poem about snow", "bake a cake"])
    assert index.max_similarity("write a poem") == (pytest.approx(0.75), 0)
    assert index.max_similarity("unrelated words only") == (0.0, -1)
    assert index.add("Write a poem!") == 2
    assert index.max_similarity("write a poem") == (1.0, 2)
    assert index.add("write a poem") == 3
    assert index.max_similarity("WRITE a poem?") == (1.0, 2)
    assert len(index) == 4 and index.texts[3] == "write a poem"


def test_empty_index_and_empty_candidate():
    assert RougeIndex().max_similarity("anything") == (0.0, -1)
    assert not RougeIndex().any_above("anything", 0.5)
    assert RougeIndex(["a b"]).max_similarity("...") == (0.0, -1)
    assert not RougeIndex(["a b"]).any_above("", 0.1)


def test_contains_normalized_ignores_case_and_punctuation_only():
    index = RougeIndex(["How do I bake bread?"])
    assert index.contains_normalized("how do i bake  bread")
    assert not index.contains_normalized("How do I bake bread quickly?")
    assert not index.contains_normalized("How do I bake?")


def test_parallel_equals_serial(random_pool):
    pool, candidates = random_pool
    index = RougeIndex(pool)
    serial = max_similarities(candidates, index)
    assert serial == [index.max_similarity(text) for text in candidates]
    assert max_similarities(candidates, index, num_workers=2) == serial
    assert max_similarities(candidates[:1], index, num_workers=3) == serial[:1]


def test_num_workers_below_one_is_a_user_error():
    with pytest.raises(CaiError, match="num_workers"):
        max_similarities(["a"], RougeIndex(["a"]), num_workers=0)
