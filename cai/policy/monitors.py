"""Reward-hacking monitors for RL rollouts: response length, distinct-n, EOS rate (pure functions).

The paper watches for the policy gaming the preference model (sec. 4.3: over-trained
policies turned boilerplate and evasive). A reward that rises while responses get longer,
lose their endings or collapse onto a few n-grams is the usual sign, so these numbers are
logged beside reward and KL at every optimisation step.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def distinct_n(sequences: Iterable[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams in the batch (Li et al. 2016); 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be at least 1, got {n}")
    seen: set[tuple[int, ...]] = set()
    total = 0
    for tokens in sequences:
        tokens = list(tokens)
        for start in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[start : start + n]))
            total += 1
    return len(seen) / total if total else 0.0


def strip_after_eos(tokens: Sequence[int], eos_token_id: int) -> tuple[list[int], bool]:
    """The response up to and including its first EOS, and whether it had one."""
    tokens = list(tokens)
    if eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1], True
    return tokens, False


def rollout_monitors(responses: Sequence[Sequence[int]], eos_token_id: int, raw_scores: Sequence[float] = ()) -> dict[str, float]:
    """Per-step monitors over a batch of response token ids (each cut at its first EOS).

    `response_length` counts the EOS; distinct-n is computed without it, so a batch of
    empty answers reads as zero diversity, not as one repeated token.
    """
    cut = [strip_after_eos(r, eos_token_id) for r in responses]
    if not cut:
        return {}
    bodies = [tokens[:-1] if ended else tokens for tokens, ended in cut]
    monitors = {
        "monitor/response_length": sum(len(tokens) for tokens, _ in cut) / len(cut),
        "monitor/eos_rate": sum(ended for _, ended in cut) / len(cut),
        "monitor/distinct_1": distinct_n(bodies, 1),
        "monitor/distinct_2": distinct_n(bodies, 2),
    }
    if len(raw_scores):
        monitors["monitor/raw_score"] = sum(raw_scores) / len(raw_scores)
    return monitors


def penalized_mean(raw_mean: float, eos_rate: float, penalty: float | None) -> float:
    """Mean score after trl's missing-EOS penalty: each response without EOS loses `penalty`."""
    return raw_mean - (penalty or 0.0) * (1.0 - eos_rate)


class PromptIndex:
    """Find where a left-padded query ends in a scored rollout row, by matching the known prompts.

    trl hands the reward model `query + response` with no column marking the boundary; every
    query is one of the training prompts' ids, so the longest matching prompt is the query.
    """

    def __init__(self, prompts: Iterable[Sequence[int]]):
        self.by_length: dict[int, set[tuple[int, ...]]] = {}
        for ids in prompts:
            self.by_length.setdefault(len(ids), set()).add(tuple(ids))
        self.lengths = sorted(self.by_length, reverse=True)

    def query_length(self, tokens: Sequence[int]) -> int | None:
        """Length of the query that `tokens` (left pads removed) starts with, or None when no prompt matches."""
        tokens = list(tokens)
        for length in self.lengths:
            if length <= len(tokens) and tuple(tokens[:length]) in self.by_length[length]:
                return length
        return None
