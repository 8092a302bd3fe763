"""Elo ratings from pairwise preferences, with bootstrap intervals and a win-rate table.

The paper (Bai et al. 2022, arXiv 2212.08073) reports Elo scores computed from pairwise
preference comparisons between models. Departures, and why:
- Ratings are the maximum-likelihood Bradley-Terry fit (Newton's method, deterministic) put
  on the Elo scale, 400 * log10 of the odds, rather than sequential Elo updates: sequential
  Elo depends on the order the comparisons arrive in and never settles. Sequential updates
  remain available as `method="sequential"` for comparison with tools that use them.
- Scores may be soft (0.7 = "A preferred with probability 0.7"); they enter the likelihood
  as fractional wins, which is the same cross-entropy the reward model is trained with.
- A model that won (or lost) every comparison has no finite maximum-likelihood rating. By
  default every model is credited with `prior_draws=1` virtual draw against a fixed reference
  opponent (log-strength 0): a weak prior that keeps ratings finite and is
  negligible once a model has tens of real comparisons. `prior_draws=0` gives the plain
  maximum-likelihood fit and raises when the comparisons do not pin it down.
- Ratings are anchored so their mean is `base`, or so a named `anchor` model sits at `base`.
- Intervals resample prompts, not single judgements, when `clusters` names each comparison's
  prompt (cluster bootstrap): one prompt yields several correlated comparisons (every model
  pair, every principle), and resampling them one by one makes the intervals too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from cai.errors import CaiError

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of natural-log odds
DEFAULT_SEQUENTIAL_K = 32.0
METHODS = ("bradley_terry", "sequential")


@dataclass(frozen=True)
class Game:
    """One judged pair: score_a is 1 when model_a's response won, 0 when it lost, soft between."""

    model_a: str
    model_b: str
    score_a: float


class EloInterval(NamedTuple):
    rating: float
    low: float
    high: float


@dataclass(frozen=True)
class _Games:
    """Comparisons as index arrays, so bootstrap rounds only resample integers."""

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray


def _record(item: Any, number: int) -> tuple[str, str, float]:
    if isinstance(item, Mapping):
        try:
            fields = (item["model_a"], item["model_b"], item["score_a"])
        except KeyError as missing:
            raise CaiError(f"elo: comparison {number} has no {missing.args[0]!r}; give model_a, model_b and score_a") from None
    elif hasattr(item, "model_a"):
        fields = (item.model_a, item.model_b, item.score_a)
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        fields = tuple(item)
    else:
        raise CaiError(f"elo: comparison {number} is {item!r}; give (model_a, model_b, score_a) records")
    model_a, model_b, score = str(fields[0]), str(fields[1]), fields[2]
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise CaiError(f"elo: comparison {number} has score_a {fields[2]!r}; scores are numbers in [0, 1]") from None
    if not 0.0 <= score <= 1.0:
        raise CaiError(f"elo: comparison {number} has score_a {score}; scores are in [0, 1] (1 = model_a preferred)")
    if model_a == model_b:
        raise CaiError(f"elo: comparison {number} pits {model_a!r} against itself; compare two different models")
    return model_a, model_b, score


def _games(comparisons: Iterable[Any]) -> _Games:
    records = [_record(item, number) for number, item in enumerate(comparisons)]
    if not records:
        raise CaiError("elo: no comparisons given; judge at least one pair of models")
    models = tuple(sorted({name for a, b, _ in records for name in (a, b)}))
    position = {name: index for index, name in enumerate(models)}
    return _Games(
        models=models,
        a=np.array([position[a] for a, _, _ in records], dtype=np.int64),
        b=np.array([position[b] for _, b, _ in records], dtype=np.int64),
        score=np.array([s for _, _, s in records], dtype=np.float64),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _pair_totals(n_models: int, a: np.ndarray, b: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Games and score of the lower-indexed model for each pair that met."""
    low, high = np.minimum(a, b), np.maximum(a, b)
    score_low = np.where(a == low, score, 1.0 - score)
    pairs, inverse = np.unique(low * n_models + high, return_inverse=True)
    games = np.bincount(inverse, minlength=pairs.size).astype(np.float64)
    wins = np.bincount(inverse, weights=score_low, minlength=pairs.size)
    return pairs // n_models, pairs % n_models, games, wins


def _strongly_connected(n_models: int, edges: list[tuple[int, int]]) -> bool:
    """Zermelo's condition: every model both beats and is beaten along some chain of results."""
    for forward in (True, False):
        neighbours: list[list[int]] = [[] for _ in range(n_models)]
        for source, target in edges:
            neighbours[source if forward else target].append(target if forward else source)
        seen, stack = {0}, [0]
        while stack:
            for nxt in neighbours[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        if len(seen) < n_models:
            return False
    return True


def _fit_strengths(n_models: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, prior_draws: float) -> np.ndarray:
    """Maximum-likelihood (or maximum a posteriori with prior draws) Bradley-Terry log-strengths."""
    low, high, games, wins = _pair_totals(n_models, a, b, score)
    if prior_draws == 0.0:
        edges = [(int(lo), int(hi)) for lo, hi, w in zip(low, high, wins) if w > 0.0]
        edges += [(int(hi), int(lo)) for lo, hi, n, w in zip(low, high, games, wins) if n - w > 0.0]
        if not _strongly_connected(n_models, edges):
            raise CaiError("elo: with prior_draws=0 the ratings are infinite or undetermined (a model won or lost every comparison, or some models never met); set prior_draws > 0 (e.g. 1) or add comparisons")

    def objective(theta: np.ndarray) -> float:
        d = theta[low] - theta[high]
        value = np.sum(wins * _log_sigmoid(d) + (games - wins) * _log_sigmoid(-d))
        return float(value + prior_draws * np.sum(0.5 * _log_sigmoid(theta) + 0.5 * _log_sigmoid(-theta)))

    theta = np.zeros(n_models)
    free = slice(1, None) if prior_draws == 0.0 else slice(None)  # without a prior, model 0 fixes the origin
    current = objective(theta)
    for _ in range(200):
        d = theta[low] - theta[high]
        residual = wins - games * _sigmoid(d)
        weight = games * _sigmoid(d) * _sigmoid(-d)
        gradient = np.bincount(low, weights=residual, minlength=n_models) - np.bincount(high, weights=residual, minlength=n_models)
        hessian = np.zeros((n_models, n_models))
        np.add.at(hessian, (low, low), -weight)
        np.add.at(hessian, (high, high), -weight)
        np.add.at(hessian, (low, high), weight)
        np.add.at(hessian, (high, low), weight)
        if prior_draws:
            gradient += prior_draws * (0.5 - _sigmoid(theta))
            hessian[np.diag_indices(n_models)] -= prior_draws * _sigmoid(theta) * _sigmoid(-theta)
        if np.max(np.abs(gradient[free])) < 1e-11 * max(1.0, float(games.sum())):
            break
        step = np.zeros(n_models)
        step[free] = np.linalg.solve(hessian[free, free], -gradient[free])
        size = 1.0
        while size > 1e-10:  # backtrack until the log-likelihood does not drop
            trial = theta + size * step
            value = objective(trial)
            if value >= current - 1e-12 * abs(current):
                theta, current = trial, value
                break
            size /= 2.0
        else:
            break  # no step improves on rounding error: converged
    return theta


def _sequential(n_models: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, k: float) -> np.ndarray:
    rating = np.zeros(n_models)
    for i, j, s in zip(a.tolist(), b.tolist(), score.tolist()):
        expected = 1.0 / (1.0 + 10.0 ** ((rating[j] - rating[i]) / 400.0))
        delta = k * (s - expected)
        rating[i] += delta
        rating[j] -= delta
    return rating / ELO_SCALE  # back to natural-log units, so anchoring is shared


def _checked_k(models: tuple[str, ...], method: str, k: float | None, prior_draws: float, anchor: str | None) -> float:
    """Check the fit options once, before any bootstrap round; returns the sequential K-factor."""
    if method not in METHODS:
        raise CaiError(f"elo: unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "bradley_terry" and k is not None:
        raise CaiError("elo: k is the K-factor of sequential Elo; drop it or set method='sequential'")
    if not (math.isfinite(prior_draws) and prior_draws >= 0.0):
        raise CaiError(f"elo: prior_draws must be a finite number >= 0, got {prior_draws}; 1 is a weak prior, 0 none")
    if anchor is not None and anchor not in models:
        raise CaiError(f"elo: anchor {anchor!r} is not among the compared models; use one of {', '.join(models)}")
    chosen_k = DEFAULT_SEQUENTIAL_K if k is None else float(k)
    if not (math.isfinite(chosen_k) and chosen_k > 0.0):
        raise CaiError(f"elo: k must be a positive number, got {k}; {DEFAULT_SEQUENTIAL_K:g} is usual")
    return chosen_k


def _ratings(games: _Games, index: np.ndarray, *, base: float, anchor: str | None, prior_draws: float, method: str, k: float) -> np.ndarray:
    n_models = len(games.models)
    a, b, score = games.a[index], games.b[index], games.score[index]
    if method == "sequential":
        theta = _sequential(n_models, a, b, score, k)
    else:
        theta = _fit_strengths(n_models, a, b, score, float(prior_draws))
    origin = theta[games.models.index(anchor)] if anchor is not None else theta.mean()
    return base + ELO_SCALE * (theta - origin)


def _leaderboard(models: tuple[str, ...], values: list[Any], ratings: np.ndarray) -> dict[str, Any]:
    order = sorted(range(len(models)), key=lambda i: (-ratings[i], models[i]))
    return {models[i]: values[i] for i in order}


def elo_from_comparisons(
    comparisons: Iterable[Any],
    *,
    k: float | None = None,
    base: float = 1000.0,
    anchor: str | None = None,
    prior_draws: float = 1.0,
    method: str = "bradley_terry",
) -> dict[str, float]:
    """Elo rating per model, best first; rating gaps read as P(a beats b) = 1 / (1 + 10^(-gap/400)).

    Comparisons are `Game`s, mappings or (model_a, model_b, score_a) tuples.
    `k` applies only to `method="sequential"` (default 32), which processes them in order.
    """
    games = _games(comparisons)
    chosen_k = _checked_k(games.models, method, k, prior_draws, anchor)
    ratings = _ratings(games, np.arange(games.score.size), base=base, anchor=anchor, prior_draws=prior_draws, method=method, k=chosen_k)
    return _leaderboard(games.models, [float(r) for r in ratings], ratings)


def bootstrap_elo_intervals(
    comparisons: Iterable[Any],
    *,
    rounds: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    k: float | None = None,
    base: float = 1000.0,
    anchor: str | None = None,
    prior_draws: float = 1.0,
    method: str = "bradley_terry",
    clusters: Iterable[Any] | None = None,
) -> dict[str, EloInterval]:
    """Point rating plus a percentile (1 - alpha) interval from resampling with replacement.

    With `clusters` (one key per comparison, e.g. its prompt id) whole clusters are resampled,
    so comparisons from one prompt stay together; without, single comparisons are.
    A model missing from a resample keeps only its prior; the anchor's interval is [base, base].
    """
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise CaiError(f"bootstrap_elo_intervals: rounds must be a positive integer, got {rounds!r}; 200 is usual")
    if not 0.0 < alpha < 1.0:
        raise CaiError(f"bootstrap_elo_intervals: alpha must be in (0, 1), got {alpha}; 0.05 gives 95% intervals")
    games = _games(comparisons)
    chosen_k = _checked_k(games.models, method, k, prior_draws, anchor)
    settings = dict(base=base, anchor=anchor, prior_draws=prior_draws, method=method, k=chosen_k)
    size = games.score.size
    groups = _cluster_groups(clusters, size) if clusters is not None else [np.array([i]) for i in range(size)]
    point = _ratings(games, np.arange(size), **settings)
    generator = np.random.default_rng(seed)

    def resample() -> np.ndarray:
        return np.concatenate([groups[i] for i in generator.integers(0, len(groups), size=len(groups))])

    samples = np.stack([_ratings(games, resample(), **settings) for _ in range(int(rounds))])
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    intervals = [EloInterval(float(point[i]), float(low[i]), float(high[i])) for i in range(len(games.models))]
    return _leaderboard(games.models, intervals, point)


def _cluster_groups(clusters: Iterable[Any], size: int) -> list[np.ndarray]:
    """Game indices per cluster key, clusters in order of first appearance."""
    keys = list(clusters)
    if len(keys) != size:
        raise CaiError(f"bootstrap_elo_intervals: {len(keys)} cluster keys for {size} comparisons; give one key (e.g. the prompt id) per comparison")
    members: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    return [np.array(indices, dtype=np.int64) for indices in members.values()]


def win_rate_matrix(comparisons: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Mean score of each model against each opponent it met, whichever side it was listed on.

    rates[a][b] + rates[b][a] == 1; pairs that never met are absent.
    """
    games = _games(comparisons)
    n_models = len(games.models)
    low, high, played, wins = _pair_totals(n_models, games.a, games.b, games.score)
    rates: dict[str, dict[str, float]] = {name: {} for name in games.models}
    for lo, hi, n, w in zip(low.tolist(), high.tolist(), played.tolist(), wins.tolist()):
        rates[games.models[lo]][games.models[hi]] = w / n
        rates[games.models[hi]][games.models[lo]] = (n - w) / n
    return {name: dict(sorted(row.items())) for name, row in rates.items()}
