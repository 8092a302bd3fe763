"""The arithmetic of AI feedback: option probabilities, debiasing, ensembling, soft-label loss.

Follows Bai et al. 2022 (arXiv 2212.08073, section 4.1): the feedback model answers a
multiple-choice question, the normalised probabilities of the option letters are the soft
preference label, labels are averaged over the principles drawn for a comparison, and
chain-of-thought probabilities are clamped to 40-60%. Departures, and why:
- Each option may have several token variants ("A", " A"); their mass is summed, because
  tokenizers split a letter after a space or a parenthesis differently.
- Scoring both orders and averaging (`debias_positions`) is an addition: the paper does not
  describe it, but small feedback models prefer whichever response is shown first.
- `ensemble_principles` also offers a mean of log-odds, which lets one confident principle
  count for more than the paper's plain mean of probabilities does.
- `soft_preference_loss` is the cross-entropy form of trl's reward loss, so the soft labels
  are trained on as targets rather than thresholded to hard labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cai.errors import CaiError

if TYPE_CHECKING:
    import torch

# Probabilities are clipped this far from 0 and 1 before taking log-odds, so a certain
# principle pulls the ensemble hard without making it infinite.
LOGIT_EPS = 1e-6
# Slack for comparisons at exactly the tie threshold (|0.6 - 0.5| is 0.0999... in binary).
TIE_SLACK = 1e-12


def _option_index(option_token_ids: Sequence[Any], vocab_size: int) -> tuple[list[list[int]], int]:
    """Variant lists per option, checked so that no token is counted for two options."""
    if len(option_token_ids) < 2:
        raise CaiError(f"option_probabilities: got {len(option_token_ids)} option(s); a comparison needs at least two options")
    options: list[list[int]] = []
    owner: dict[int, int] = {}
    for number, entry in enumerate(option_token_ids):
        raw = [entry] if isinstance(entry, (int, np.integer)) else list(entry)
        if not raw:
            raise CaiError(f"option_probabilities: option {number} has no token ids; give each option at least one token id")
        variants: list[int] = []
        for token in raw:
            token = int(token)
            if not 0 <= token < vocab_size:
                raise CaiError(f"option_probabilities: token id {token} (option {number}) is outside the vocabulary of size {vocab_size}; take the option ids from the feedback model's own tokenizer")
            if owner.get(token, number) != number:
                raise CaiError(f"option_probabilities: token id {token} is listed under options {owner[token]} and {number}; give each option its own token ids (check that the option labels tokenize differently)")
            owner[token] = number
            if token not in variants:  # "A" and " A" may be one token in some tokenizers
                variants.append(token)
        options.append(variants)
    width = max(len(v) for v in options)
    return options, width


def option_probabilities(logits: torch.Tensor, option_token_ids: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
    """Normalised probabilities over the option letters: the paper's soft preference label (sec. 4.1).

    Softmax restricted to the options, an option's logit being the logsumexp of its variants'.
    Computed in float32; returns [..., n_options] for logits [vocab] or [batch, vocab].
    """
    import torch

    if logits.dim() not in (1, 2):
        raise ValueError(f"option_probabilities: logits must be [vocab] or [batch, vocab], got shape {tuple(logits.shape)}")
    options, width = _option_index(option_token_ids, logits.shape[-1])
    index = torch.zeros(len(options), width, dtype=torch.long, device=logits.device)
    present = torch.zeros(len(options), width, dtype=torch.bool, device=logits.device)
    for row, variants in enumerate(options):
        index[row, : len(variants)] = torch.tensor(variants, dtype=torch.long)
        present[row, : len(variants)] = True
    gathered = logits.float()[..., index]  # [..., n_options, width]
    gathered = gathered.masked_fill(~present, float("-inf"))
    option_logits = torch.logsumexp(gathered, dim=-1)
    return torch.softmax(option_logits, dim=-1)


def _probabilities(values: Any, where: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size and (np.isnan(array).any() or array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(f"{where}: probabilities must lie in [0, 1]")
    return array


def _same_kind(result: np.ndarray) -> float | np.ndarray:
    return float(result) if result.ndim == 0 else result


def debias_positions(p_first_in_order_ab: float | np.ndarray, p_first_in_order_ba: float | np.ndarray) -> float | np.ndarray:
    """P(response 1 is better) with position bias averaged out.

    Both arguments are the probability of the first-shown option (A): in order (1, 2) that is
    response 1, in order (2, 1) it is response 2, so response 1 gets 1 - p there.
    """
    ab = _probabilities(p_first_in_order_ab, "debias_positions")
    ba = _probabilities(p_first_in_order_ba, "debias_positions")
    if ab.shape != ba.shape:
        raise ValueError(f"debias_positions: shapes differ, {ab.shape} and {ba.shape}")
    return _same_kind((ab + (1.0 - ba)) / 2.0)


@dataclass(frozen=True)
class PositionBias:
    """How much the feedback model favours the first-shown response (0.5 = not at all)."""

    first_preferred_share: float
    mean_p_first: float
    count: int


def position_bias(p_a_values: Sequence[float] | np.ndarray) -> PositionBias:
    """Share of comparisons where option A got p > 0.5 (ties count as not preferred), and mean p_A.

    Feed raw p_A from every scored order, before `debias_positions`.
    """
    values = _probabilities(p_a_values, "position_bias").ravel()
    if values.size == 0:
        raise CaiError("position_bias: no comparisons given; score at least one comparison before reporting position bias")
    return PositionBias(
        first_preferred_share=float(np.mean(values > 0.5)),
        mean_p_first=float(np.mean(values)),
        count=int(values.size),
    )


def ensemble_principles(probabilities: Sequence[float] | np.ndarray, *, method: str = "mean", axis: int = -1) -> float | np.ndarray:
    """One label per comparison from the principles drawn for it (the paper averages probabilities).

    `method="logit_mean"` averages log-odds instead (probabilities clipped to [1e-6, 1 - 1e-6]).
    `axis` is the principles axis, so [comparisons, principles] arrays reduce to [comparisons].
    """
    values = _probabilities(probabilities, "ensemble_principles")
    if values.size == 0 or values.shape[axis] == 0:
        raise CaiError("ensemble_principles: no principle scores given; draw at least one principle per comparison")
    if method == "mean":
        return _same_kind(np.mean(values, axis=axis))
    if method == "logit_mean":
        clipped = np.clip(values, LOGIT_EPS, 1.0 - LOGIT_EPS)
        mean_logit = np.mean(np.log(clipped) - np.log1p(-clipped), axis=axis)
        return _same_kind(1.0 / (1.0 + np.exp(-mean_logit)))
    raise CaiError(f"ensemble_principles: unknown method {method!r}; use 'mean' or 'logit_mean'")


def clamp_probability(p: float | np.ndarray, low: float = 0.4, high: float = 0.6) -> float | np.ndarray:
    """Keep chain-of-thought labels in a band, since CoT answers are near 0 or 1 (paper: 40-60%, sec. 4.1)."""
    if not (0.0 <= low <= 0.5 <= high <= 1.0):
        raise CaiError(f"clamp_probability: band [{low}, {high}] must satisfy 0 <= low <= 0.5 <= high <= 1; for example low=0.4, high=0.6")
    values = _probabilities(p, "clamp_probability")
    return _same_kind(np.clip(values, low, high))


def soft_preference_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    p_chosen: torch.Tensor | float,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry cross-entropy against a soft target, mean over the batch.

    -(p * logsigmoid(d) + (1 - p) * logsigmoid(-d)) with d = r_chosen - r_rejected - margin;
    at p = 1 this is trl's RewardTrainer loss, -logsigmoid(d). With `weights` the mean is
    weighted, sum(w * loss) / sum(w) (the length-balance remedy weights pairs).
    """
    import torch
    import torch.nn.functional as F

    difference = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        difference = difference - margin.float()
    p = torch.as_tensor(p_chosen, dtype=difference.dtype, device=difference.device)
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise CaiError("soft_preference_loss: p_chosen has values outside [0, 1]; preference labels must be probabilities")
    loss = -(p * F.logsigmoid(difference) + (1.0 - p) * F.logsigmoid(-difference))
    if weights is None:
        return loss.mean()
    w = torch.as_tensor(weights, dtype=loss.dtype, device=loss.device)
    return (w * loss).sum() / w.sum().clamp(min=1e-12)


def drop_near_ties(p: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Mask keeping comparisons with |p - 0.5| >= threshold: near-ties carry mostly noise."""
    if not 0.0 <= threshold <= 0.5:
        raise CaiError(f"drop_near_ties: threshold {threshold} must be in [0, 0.5]; 0 keeps everything, 0.1 drops labels within 0.4-0.6")
    values = _probabilities(p, "drop_near_ties")
    return np.abs(values - 0.5) >= threshold - TIE_SLACK


@dataclass(frozen=True)
class Calibration:
    """Held-out reward-model quality: is sigmoid(r_chosen - r_rejected) a trustworthy probability?"""

    expected_calibration_error: float
    brier: float
    accuracy: float
    count: int


def calibration(p_predicted: Sequence[float] | np.ndarray, outcome: Sequence[int] | np.ndarray, bins: int = 10) -> Calibration:
    """ECE over equal-width bins [k/bins, (k+1)/bins) (the last one closed), Brier score, accuracy.

    Accuracy counts p > 0.5 as predicting the labelled chosen, like trl's strict r_c > r_r.
    """
    p = _probabilities(p_predicted, "calibration").ravel()
    y = np.asarray(outcome, dtype=np.float64).ravel()
    if p.size == 0:
        raise CaiError("calibration: no held-out comparisons; hold out at least one comparison to report calibration")
    if p.shape != y.shape:
        raise ValueError(f"calibration: {p.size} predictions but {y.size} outcomes")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CaiError("calibration: outcomes must be 0 or 1; use 1 when the labelled chosen response is truly preferred")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise CaiError(f"calibration: bins must be a positive integer, got {bins!r}; 10 is usual")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    # sum_b (n_b / N) * |mean(y_b) - mean(p_b)| == sum_b |sum(y_b) - sum(p_b)| / N
    ece = float(gap.sum() / p.size)
    return Calibration(
        expected_calibration_error=ece,
        brier=float(np.mean((p - y) ** 2)),
        accuracy=float(np.mean((p > 0.5) == (y == 1.0))),
        count=int(p.size),
    )


def soft_calibration(p_predicted: Sequence[float] | np.ndarray, targets: Sequence[float] | np.ndarray, bins: int = 10) -> tuple[float, float]:
    """(ECE, Brier) of predictions against the soft targets they were trained on.

    ECE = sum over equal-width bins of |sum(target) - sum(p)| / N: 0 for a perfect soft fit
    (p == target), where comparing with the winner (target rounded to 0/1) would report the
    labels' own uncertainty as miscalibration (0.36 for a perfect fit to targets near 0.6).
    Brier = mean (p - target)^2.
    """
    p = _probabilities(p_predicted, "soft_calibration").ravel()
    t = _probabilities(targets, "soft_calibration").ravel()
    if p.size == 0 or p.shape != t.shape:
        raise ValueError(f"soft_calibration: {p.size} predictions for {t.size} targets")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, weights=t, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    return float(gap.sum() / p.size), float(np.mean((p - t) ** 2))
