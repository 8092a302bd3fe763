"""ROUGE-L F-measure, identical to `rouge-score`'s, fast enough to check a large pool.

Self-Instruct compares every candidate with every pool item using `rouge_score`, whose
O(n*m) dynamic-programming table in pure Python makes a 10k pool take minutes per batch.
Here the scores are the same floats (same tokeniser, same formula, no stemming) but:
- each pool item is tokenised once and mapped to integer ids;
- LCS uses the bit-parallel algorithm (Allison-Dix / Hyyro): per pool item one bitmask
  per distinct token, so a comparison is O(len(candidate)) big-int operations;
- an exact upper bound prunes items: LCS <= multiset token overlap <= min(len a, len b),
  so F <= 2*overlap/(len a + len b); overlaps for the whole pool come from an inverted
  index with numpy, and only items whose bound can still win are compared exactly;
- `max_similarities` can spread candidates over processes; results equal the serial ones.
"""

from __future__ import annotations

import multiprocessing
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from cai.errors import CaiError

# rouge_score.tokenize: lowercase, non-[a-z0-9] runs -> space, split, keep ^[a-z0-9]+$ tokens.
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
# Float slack for pruning with bounds: far below the smallest gap between two distinct
# scores (1/(len*len)) and far above the rounding error of the F-measure formula.
_EPSILON = 1e-9


def tokenize(text: str) -> list[str]:
    """Tokens exactly as rouge-score's default tokenizer without stemming makes them."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _fmeasure(lcs: int, target_length: int, prediction_length: int) -> float:
    """rouge-score's arithmetic, operation for operation, so the floats are identical."""
    if lcs == 0:
        return 0.0
    precision = lcs / prediction_length
    recall = lcs / target_length
    return 2 * precision * recall / (precision + recall)


def _match_masks(ids: Sequence[int]) -> dict[int, int]:
    """For each distinct token, the bitmask of positions where it occurs."""
    masks: dict[int, int] = {}
    for position, token in enumerate(ids):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def _lcs_length(masks: dict[int, int], length: int, other: Iterable[int]) -> int:
    """Bit-parallel LCS (Hyyro 2004): zero bits of V count the matched positions."""
    full = (1 << length) - 1
    vector = full
    for token in other:
        mask = masks.get(token)
        if mask is not None:
            matched = vector & mask
            vector = (vector + matched) | (vector - matched)
    return length - (vector & full).bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts; equals `RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`."""
    tokens_a, tokens_b = tokenize(a), tokenize(b)
    if not tokens_a or not tokens_b:
        return 0.0
    vocabulary: dict[str, int] = {}
    ids_a = [vocabulary.setdefault(token, len(vocabulary)) for token in tokens_a]
    ids_b = [vocabulary.get(token, -1) for token in tokens_b]
    lcs = _lcs_length(_match_masks(ids_a), len(ids_a), ids_b)
    return _fmeasure(lcs, len(ids_a), len(ids_b))


class RougeIndex:
    """A growing pool of texts, each tokenised once, answering "how similar is the closest item?".

    Scores are those of `rouge_l(item, candidate)`; ties go to the lowest index, as a
    left-to-right scan would give.
    """

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._vocabulary: dict[str, int] = {}
        self._texts: list[str] = []
        self._masks: list[dict[int, int]] = []
        self._lengths = np.zeros(16, dtype=np.int64)
        self._postings: dict[int, tuple[list[int], list[int]]] = {}
        self._posting_arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._keys: set[tuple[int, ...]] = set()
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        return list(self._texts)

    def add(self, text: str) -> int:
        """Tokenise and index one more item; returns its index."""
        index = len(self._texts)
        ids = [self._vocabulary.setdefault(token, len(self._vocabulary)) for token in tokenize(text)]
        if index == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[index] = len(ids)
        self._texts.append(text)
        self._masks.append(_match_masks(ids))
        self._keys.add(tuple(ids))
        for token, count in Counter(ids).items():
            items, counts = self._postings.setdefault(token, ([], []))
            items.append(index)
            counts.append(count)
            self._posting_arrays.pop(token, None)
        return index

    def contains_normalized(self, text: str) -> bool:
        """Whether some item has exactly the same token sequence (case and punctuation ignored)."""
        ids = self._encode(tokenize(text))
        return -1 not in ids and tuple(ids) in self._keys

    def max_similarity(self, candidate: str) -> tuple[float, int]:
        """(best ROUGE-L F, index of that item); (0.0, -1) when no item shares a token."""
        tokens = tokenize(candidate)
        bounds, items = self._bounds(tokens)
        if not items.size:
            return 0.0, -1
        order = np.argsort(-bounds, kind="stable")
        ids = self._encode(tokens)
        best, best_index = 0.0, -1
        for bound, item in zip(bounds[order].tolist(), items[order].tolist()):
            if bound < best - _EPSILON:
                break
            score = self._score(item, ids)
            if score > best or (score == best and item < best_index):
                best, best_index = score, item
        return best, best_index

    def any_above(self, candidate: str, threshold: float) -> bool:
        """Whether some item scores >= threshold; stops at the first one found."""
        if threshold <= 0:
            return len(self) > 0
        tokens = tokenize(candidate)
        bounds, items = self._bounds(tokens)
        keep = bounds >= threshold - _EPSILON
        bounds, items = bounds[keep], items[keep]
        if not items.size:
            return False
        ids = self._encode(tokens)
        for item in items[np.argsort(-bounds, kind="stable")].tolist():
            if self._score(item, ids) >= threshold:
                return True
        return False

    # ---------------------------------------------------------------- internals

    def _encode(self, tokens: list[str]) -> list[int]:
        """Token ids; -1 for tokens no pool item has (they can never match)."""
        return [self._vocabulary.get(token, -1) for token in tokens]

    def _score(self, item: int, candidate_ids: list[int]) -> float:
        length = int(self._lengths[item])
        lcs = _lcs_length(self._masks[item], length, candidate_ids)
        return _fmeasure(lcs, length, len(candidate_ids))

    def _arrays(self, token: int) -> tuple[np.ndarray, np.ndarray]:
        """A token's posting list as numpy arrays, rebuilt only after an `add` touched it."""
        arrays = self._posting_arrays.get(token)
        if arrays is None:
            items, counts = self._postings[token]
            arrays = (np.asarray(items, dtype=np.int64), np.asarray(counts, dtype=np.int64))
            self._posting_arrays[token] = arrays
        return arrays

    def _bounds(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Upper bounds 2*overlap/(la+lb) for the items sharing at least one token, and their indices."""
        size = len(self._texts)
        overlap = np.zeros(size, dtype=np.int64)
        for token, count in Counter(tokens).items():
            token_id = self._vocabulary.get(token)
            if token_id is None:
                continue
            items, counts = self._arrays(token_id)
            overlap[items] += 1 if count == 1 else np.minimum(counts, count)
        items = np.flatnonzero(overlap)
        bounds = 2.0 * overlap[items] / (self._lengths[items] + len(tokens))
        return bounds, items


# ------------------------------------------------------------------ processes

_WORKER_INDEX: RougeIndex | None = None


def _set_worker_index(index: RougeIndex) -> None:
    global _WORKER_INDEX
    _WORKER_INDEX = index


def _worker_max(candidates: list[str]) -> list[tuple[float, int]]:
    assert _WORKER_INDEX is not None  # set by the pool initializer, never by users
    return [_WORKER_INDEX.max_similarity(text) for text in candidates]


def max_similarities(candidates: Sequence[str], pool_index: RougeIndex, *, num_workers: int = 1) -> list[tuple[float, int]]:
    """`pool_index.max_similarity` for each candidate, in order, optionally over processes.

    With num_workers > 1 the candidates are cut into contiguous chunks for a process pool
    (fork where the platform has it, so the index is inherited rather than pickled; each
    worker gets it once through the initializer otherwise). Start-up costs tens of ms, so
    it pays only for large pools or many candidates. Results equal the serial ones.
    """
    if num_workers < 1:
        raise CaiError(f"rouge.max_similarities: num_workers={num_workers} is below 1; use 1 for serial")
    candidates = list(candidates)
    if num_workers == 1 or len(candidates) < 2:
        return [pool_index.max_similarity(text) for text in candidates]
    workers = min(num_workers, len(candidates))
    chunk = -(-len(candidates) // (workers * 4))
    chunks = [candidates[start : start + chunk] for start in range(0, len(candidates), chunk)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_worker_index, initargs=(pool_index,)) as pool:
        return [result for part in pool.map(_worker_max, chunks) for result in part]
