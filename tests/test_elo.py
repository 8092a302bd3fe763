"""Elo ratings: Bradley-Terry fits checked against odds worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from cai.errors import CaiError
from cai.evaluation.elo import (
    EloInterval,
    Game,
    bootstrap_elo_intervals,
    elo_from_comparisons,
    win_rate_matrix,
)

# A wins 3 of 4 against B
THREE_OF_FOUR = [("A", "B", 1.0)] * 3 + [("A", "B", 0.0)]
# Strengths 4 : 2 : 1 reproduced exactly by the win shares:
# P(A>B) = 4/6 = 2/3 (2 of 3), P(B>C) = 2/3 (2 of 3, one listed as C vs B), P(A>C) = 4/5 (4 of 5).
# The likelihood equations (observed wins = expected wins) then hold at exactly those strengths.
THREE_MODELS = [("A", "B", 1.0)] * 2 + [("A", "B", 0.0)] + [("B", "C", 1.0)] * 2 + [("C", "B", 1.0)] + [("A", "C", 1.0)] * 4 + [("A", "C", 0.0)]
ELO_LOG10_2 = 400 * math.log10(2)  # 120.41199826559248


def test_two_models_hand_worked():
    # odds 3 : 1 -> gap 400 * log10(3) = 190.8485...; mean anchored at 1000 -> 1000 +/- 95.4243
    ratings = elo_from_comparisons(THREE_OF_FOUR, prior_draws=0)
    gap = 400 * math.log10(3)
    assert ratings["A"] - ratings["B"] == pytest.approx(gap, abs=1e-6)
    assert ratings["A"] == pytest.approx(1000 + gap / 2, abs=1e-6)
    assert ratings["B"] == pytest.approx(1000 - gap / 2, abs=1e-6)
    assert list(ratings) == ["A", "B"]  # best first


def test_soft_score_counts_as_fractional_wins():
    # one comparison scored 0.75 carries the same odds, 3 : 1, as 3 wins in 4
    ratings = elo_from_comparisons([("A", "B", 0.75)], prior_draws=0)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_three_models_hand_worked():
    # strengths 4 : 2 : 1 -> each step is 400 * log10(2); the geometric mean strength is 2 (= B),
    # so the mean-anchored ratings are 1000 + 120.412, 1000, 1000 - 120.412
    ratings = elo_from_comparisons(THREE_MODELS, prior_draws=0)
    assert list(ratings) == ["A", "B", "C"]
    assert ratings["A"] == pytest.approx(1000 + ELO_LOG10_2, abs=1e-6)
    assert ratings["B"] == pytest.approx(1000.0, abs=1e-6)
    assert ratings["C"] == pytest.approx(1000 - ELO_LOG10_2, abs=1e-6)


def test_anchor_model_sits_at_base():
    # C anchored at 1500: B = 1500 + 120.412, A = 1500 + 240.824
    ratings = elo_from_comparisons(THREE_MODELS, prior_draws=0, anchor="C", base=1500)
    assert ratings["C"] == pytest.approx(1500.0, abs=1e-9)
    assert ratings["B"] == pytest.approx(1500 + ELO_LOG10_2, abs=1e-6)
    assert ratings["A"] == pytest.approx(1500 + 2 * ELO_LOG10_2, abs=1e-6)


def test_fit_does_not_depend_on_order_or_record_form():
    shuffled = list(THREE_MODELS)
    random.Random(3).shuffle(shuffled)
    as_records = [Game(a, b, s) for a, b, s in shuffled]
    as_dicts = [{"model_a": a, "model_b": b, "score_a": s} for a, b, s in reversed(shuffled)]
    expected = elo_from_comparisons(THREE_MODELS)
    for variant in (shuffled, as_records, as_dicts):
        got = elo_from_comparisons(variant)
        assert got == pytest.approx(expected, abs=1e-9)


def test_all_wins_is_finite_with_the_default_prior():
    # A beats B 5 times. With one virtual draw each against a reference at log-strength 0,
    # symmetry gives theta_A = x, theta_B = -x, and A's likelihood equation reads
    #   observed 5 + 0.5 = expected 5 * sigmoid(2x) + sigmoid(x).
    ratings = elo_from_comparisons([("A", "B", 1.0)] * 5)
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["A"] > ratings["B"]
    assert ratings["A"] + ratings["B"] == pytest.approx(2000.0, abs=1e-9)
    x = (ratings["A"] - 1000) * math.log(10) / 400
    sigmoid = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    assert 5 * sigmoid(2 * x) + sigmoid(x) == pytest.approx(5.5, abs=1e-9)


def test_prior_shrinks_towards_equal_ratings():
    plain = elo_from_comparisons(THREE_OF_FOUR, prior_draws=0)
    shrunk = elo_from_comparisons(THREE_OF_FOUR, prior_draws=1)
    much = elo_from_comparisons(THREE_OF_FOUR, prior_draws=20)
    gaps = [r["A"] - r["B"] for r in (plain, shrunk, much)]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_without_prior_undetermined_ratings_raise():
    with pytest.raises(CaiError, match="prior_draws > 0"):
        elo_from_comparisons([("A", "B", 1.0)] * 5, prior_draws=0)
    # two separate leagues that never met: no common scale
    leagues = [("A", "B", 0.5), ("C", "D", 0.5)]
    with pytest.raises(CaiError, match="never met"):
        elo_from_comparisons(leagues, prior_draws=0)
    # with the prior every rating is finite; even halves draw, so all sit at the base
    assert elo_from_comparisons(leagues) == pytest.approx({"A": 1000.0, "B": 1000.0, "C": 1000.0, "D": 1000.0}, abs=1e-9)


def test_sequential_elo_hand_worked_and_order_dependent():
    # k = 32, both at 1000: expected 0.5, A wins -> A 1016, B 984
    assert elo_from_comparisons([("A", "B", 1.0)], method="sequential") == pytest.approx({"A": 1016.0, "B": 984.0}, abs=1e-9)
    # then B wins: E_B = 1 / (1 + 10^(32/400)) = 0.454078..., B gains 32 * (1 - E_B) = 17.4695...
    e_b = 1 / (1 + 10 ** (32 / 400))
    ratings = elo_from_comparisons([("A", "B", 1.0), ("A", "B", 0.0)], method="sequential")
    assert ratings["B"] == pytest.approx(984 + 32 * (1 - e_b), abs=1e-9)
    # the same two results in the other order favour A: sequential Elo depends on order
    reversed_order = elo_from_comparisons([("A", "B", 0.0), ("A", "B", 1.0)], method="sequential")
    assert reversed_order["A"] == pytest.approx(ratings["B"], abs=1e-9)
    assert reversed_order["A"] > reversed_order["B"]


def test_bad_input_is_a_user_error():
    with pytest.raises(CaiError, match="no comparisons"):
        elo_from_comparisons([])
    with pytest.raises(CaiError, match="against itself"):
        elo_from_comparisons([("A", "A", 1.0)])
    with pytest.raises(CaiError, match=r"scores are in \[0, 1\]"):
        elo_from_comparisons([("A", "B", 2.0)])
    with pytest.raises(CaiError, match="no 'score_a'"):
        elo_from_comparisons([{"model_a": "A", "model_b": "B"}])
    with pytest.raises(CaiError, match="anchor 'Z'"):
        elo_from_comparisons(THREE_OF_FOUR, anchor="Z")
    with pytest.raises(CaiError, match="K-factor"):
        elo_from_comparisons(THREE_OF_FOUR, k=16)
    with pytest.raises(CaiError, match="unknown method"):
        elo_from_comparisons(THREE_OF_FOUR, method="glicko")


def test_bootstrap_contains_point_estimate_and_is_seeded():
    data = THREE_MODELS * 3
    point = elo_from_comparisons(data)
    intervals = bootstrap_elo_intervals(data, rounds=200, seed=0)
    assert list(intervals) == ["A", "B", "C"]
    for model, interval in intervals.items():
        assert isinstance(interval, EloInterval)
        assert interval.rating == pytest.approx(point[model], abs=1e-9)
        assert interval.low < interval.rating < interval.high
    assert bootstrap_elo_intervals(data, rounds=200, seed=0) == intervals
    assert bootstrap_elo_intervals(data, rounds=200, seed=1) != intervals


def test_bootstrap_narrows_with_more_data_and_alpha():
    small = bootstrap_elo_intervals(THREE_MODELS, rounds=100, seed=0)["A"]
    large = bootstrap_elo_intervals(THREE_MODELS * 10, rounds=100, seed=0)["A"]
    assert large.high - large.low < small.high - small.low
    wide = bootstrap_elo_intervals(THREE_MODELS, rounds=100, seed=0, alpha=0.01)["A"]
    narrow = bootstrap_elo_intervals(THREE_MODELS, rounds=100, seed=0, alpha=0.5)["A"]
    assert wide.high - wide.low > narrow.high - narrow.low


def test_bootstrap_anchor_is_fixed_and_options_checked():
    intervals = bootstrap_elo_intervals(THREE_MODELS, rounds=20, anchor="B")
    assert intervals["B"] == EloInterval(1000.0, 1000.0, 1000.0)
    with pytest.raises(CaiError, match="rounds"):
        bootstrap_elo_intervals(THREE_MODELS, rounds=0)
    with pytest.raises(CaiError, match="alpha"):
        bootstrap_elo_intervals(THREE_MODELS, alpha=1.0)


def test_win_rate_matrix_by_hand():
    # A vs B listed three ways: A scores 1, 0.5, and (listed as B vs A with B scoring 0.25) 0.75
    # -> A's mean against B = 2.25 / 3 = 0.75, B's = 0.25; A and C never met
    rates = win_rate_matrix([("A", "B", 1.0), ("A", "B", 0.5), ("B", "A", 0.25), ("B", "C", 0.0)])
    assert rates == {"A": {"B": 0.75}, "B": {"A": 0.25, "C": 0.0}, "C": {"B": 1.0}}


def test_cluster_bootstrap_resamples_prompts_not_judgements():
    """10 prompts, each judged 5 times with the same outcome (A wins on 6, B on 4). Judgement-level
    resampling treats the 50 as independent; resampling prompts keeps each prompt's 5 together, so
    its interval is wider by about sqrt(5) (the design effect of perfectly correlated clusters)."""
    games, prompts = [], []
    for prompt in range(10):
        for _ in range(5):
            games.append(("A", "B", 1.0 if prompt < 6 else 0.0))
            prompts.append(f"p{prompt}")
    single = bootstrap_elo_intervals(games, rounds=400, seed=0)["A"]
    clustered = bootstrap_elo_intervals(games, rounds=400, seed=0, clusters=prompts)["A"]
    assert clustered.rating == single.rating
    ratio = (clustered.high - clustered.low) / (single.high - single.low)
    assert 1.6 < ratio < 3.2, ratio


def test_singleton_clusters_are_the_judgement_bootstrap():
    clusters = list(range(len(THREE_MODELS)))
    assert bootstrap_elo_intervals(THREE_MODELS, rounds=50, seed=3, clusters=clusters) == bootstrap_elo_intervals(THREE_MODELS, rounds=50, seed=3)
    with pytest.raises(CaiError, match="cluster keys for"):
        bootstrap_elo_intervals(THREE_MODELS, rounds=5, clusters=["p1"])


def test_eval_elo_tables_resample_prompts():
    from cai.evaluation.metrics import elo_tables

    judgements = [{"kind": "red_team", "prompt_id": f"p{p}", "model_a": "A", "model_b": "B", "p_a": 1.0 if p < 6 else 0.0} for p in range(10) for _ in range(5)]
    table = elo_tables(judgements, rounds=100, seed=0)["red_team"]["ratings"]["A"]
    games = [(j["model_a"], j["model_b"], j["p_a"]) for j in judgements]
    expected = bootstrap_elo_intervals(games, rounds=100, seed=0, clusters=[j["prompt_id"] for j in judgements])["A"]
    assert (table["low"], table["high"]) == (expected.low, expected.high)
    assert (table["low"], table["high"]) != tuple(bootstrap_elo_intervals(games, rounds=100, seed=0)["A"][1:])
