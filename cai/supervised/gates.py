"""Quality gates for SL-CAI revisions: named filters a revision must pass to become a training target.

Small critics fail in recognisable ways (measured on SmolLM2-135M): they repeat the critique
or revision request back, talk *about* "the response" instead of answering the user, copy a
demonstration onto an unrelated prompt, loop, stop mid-sentence at the token limit, or leak
chat markers. Each failure is one named gate with a threshold in `sl.gates`; every check
runs and all reasons are recorded, so the manifest can count each filter and the rejected
records can be audited. The paper trained on every revision; this is our departure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cai.config import GatesConfig
from cai.self_instruct.rouge import rouge_l, tokenize

# The order reasons are reported in; a record's first reason is the one it is counted under.
GATES = ("empty", "leaked_markers", "repetition", "parroting", "meta_commentary", "unchanged", "truncated")

_META = re.compile(
    r"\b(?:the|this|that|my|your)\s+(?:(?:previous|last|original|initial|earlier|above|revised|new|first|current)\s+)?"
    r"(?:response|revision|critique|reply)\b(?!\s+(?:time|team|rate|plan|letter|email)\b)"
    r"|\b(?:the|my|your)\s+(?:previous|last|original|initial|earlier|above|revised|first)\s+answer\b"
    r"|\b(?:the|an|this)\s+ai(?:\s+assistant)?\b|\bthe\s+assistant\b|\brevised\s+version\b",
    re.IGNORECASE,
)
_MARKERS = re.compile(
    r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]|^\s*(?:user|assistant|system|human)\s*:|"
    r"\b(?:critique|revision)\s+request\s*:|^\s*(?:critique|revision)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_WORD = re.compile(r"\w+", re.UNICODE)
_SYMBOL_RUN = re.compile(r"([^\w\s])\1{4,}")
_SENTENCE_END = re.compile(r"""[.!?…:;)\]}"'`*]\s*$|[\U0001F300-\U0001FAFF\u2600-\u27BF]\s*$""")


def words(text: str) -> list[str]:
    """Lower-cased words with a plural 's' dropped, so "Parent-Parents-Parent" counts as one word repeated."""
    return [w.lower().removesuffix("s") or w.lower() for w in _WORD.findall(text)]


def distinct_2(tokens: Sequence[str]) -> float:
    """Share of distinct word bigrams; 1.0 for texts too short to have two."""
    bigrams = list(zip(tokens, tokens[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def longest_repeat_run(tokens: Sequence[str]) -> int:
    """The longest run of one word repeated back to back ("parent parent parent" is 3)."""
    best = run = 1 if tokens else 0
    for previous, current in zip(tokens, tokens[1:]):
        run = run + 1 if current == previous else 1
        best = max(best, run)
    return best


def is_repetitive(text: str, thresholds: GatesConfig) -> bool:
    tokens = words(text)
    if longest_repeat_run(tokens) > thresholds.max_repeat_run or _SYMBOL_RUN.search(text):
        return True
    return len(tokens) >= 12 and distinct_2(tokens) < thresholds.min_distinct_2


def max_overlap(text: str, references: Sequence[str]) -> float:
    """The highest ROUGE-L F between `text` and any reference text."""
    if not tokenize(text):
        return 0.0
    return max((rouge_l(reference, text) for reference in references if reference.strip()), default=0.0)


def ends_a_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text.rstrip()))


_INNER_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")  # "e.g. this" splits too: good enough for these cuts


def trim_to_last_sentence(text: str) -> str:
    """Drop an unfinished last sentence (cut at the token limit); unchanged if no sentence ends."""
    text = text.rstrip()
    if ends_a_sentence(text):
        return text
    ends = [m.end() for m in _INNER_SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def first_sentences(text: str, count: int | None) -> str:
    """The text up to the end of its `count`-th sentence (all of it when `count` is None or it has fewer): `sl.revision_sentences`."""
    if count is None:
        return text
    ends = [m.end() for m in _INNER_SENTENCE_END.finditer(text)]
    return text[: ends[count - 1]] if len(ends) >= count else text


def revision_failures(text: str, *, response: str, references: Sequence[str], thresholds: GatesConfig) -> list[str]:
    """Every gate `text` fails, in `GATES` order; empty when it is a usable training target.

    `response` is the text being revised (for `unchanged`); `references` are the texts a
    revision must not parrot: the critique and revision requests, the critique, and the
    demonstrations' texts.
    """
    failures = basic_failures(text, thresholds)
    if failures == ["empty"]:
        return failures
    if max_overlap(text, references) >= thresholds.parrot_rouge:
        failures.append("parroting")
    if thresholds.meta_commentary and _META.search(text):
        failures.append("meta_commentary")
    if response.strip() and rouge_l(response, text) >= thresholds.unchanged_rouge:
        failures.append("unchanged")
    if thresholds.require_sentence_end and not ends_a_sentence(text):
        failures.append("truncated")
    return sorted(failures, key=GATES.index)


def basic_failures(text: str, thresholds: GatesConfig) -> list[str]:
    """The gates that apply to any training target, helpful answers included: empty, markers, loops."""
    if len(words(text)) < thresholds.min_words:
        return ["empty"]
    failures = []
    if _MARKERS.search(text):
        failures.append("leaked_markers")
    if is_repetitive(text, thresholds):
        failures.append("repetition")
    return failures


def helpful_failures(text: str, thresholds: GatesConfig) -> list[str]:
    """Gates for helpful answers mixed into SFT (no principle or critique to parrot)."""
    failures = basic_failures(text, thresholds)
    if failures != ["empty"] and thresholds.require_sentence_end and not ends_a_sentence(text):
        failures.append("truncated")
    return failures
