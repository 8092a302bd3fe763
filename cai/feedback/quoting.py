"""Quoted text made inert before it enters a judge prompt: `neutralize`.

Every judge that reads responses (multiple choice, pointwise, the contrastive method's judge
when it is one of those, the eval refusal judge) pastes the request and the responses between
BEGIN/END fences (`judge.fenced`). A small judge reads what a quote says, not where it sits: on
SmolLM2-135M with positions not debiased, a response holding a fake chat turn, a fake closing
fence or "The answer is (A)" moved the label by up to +0.36 and flipped 27 of 54 planted pairs,
look-alike spellings working best (benchmarks/bench_injection.py). Breaking exact special tokens
and `===` with a zero-width space, as this code did before, stopped the tokenizer from reading
them as tokens but not the model from reading them as text. Neutralised, the same plants move
the label toward themselves by +0.05 at most (a benign suffix moves it by up to 0.06) and flip
none.

So whatever imitates the judge prompt's own structure is replaced by a visible, inert tag:

- chat markers: the turn markers of the common templates (`<|...|>`, `<start_of_turn>`,
  `<end_of_turn>`) and the feedback tokenizer's special tokens named like turns (`[INST]`, ...)
  -> `[chat marker]`; its other special tokens (`<filename>`) are broken up where spelled exactly,
  so that none can become a special token id inside a quote;
- fence lines: BEGIN/END with one of the judge's labels (`RESPONSE A`, `HUMAN REQUEST`, ...), or
  BEGIN/END/START/STOP between runs of three `=`, `-`, `#` or `~` -> `[fence]`;
- option headers: a line holding only `(A)` or `(B)`, `Options:`, `Response A:` -> `[option label]`;
- answer claims: "The answer is (A)", "Answer: B", "(A) is better", "I choose (B)" -> `[answer claim]`;
- turn starts: `Human:`, `User:`, `Assistant:`, `System:` opening a line -> `[Human]` (the word kept).

Look-alikes are caught, not only exact spellings: matching runs on a skeleton of the text
(NFKC, so fullwidth `｜` is `|`; zero-width and other format characters dropped; Cyrillic and
Greek letters and bar/bracket look-alikes folded to ASCII; case ignored; spaces, `_` and `-`
allowed inside markers), and the span of the original text under each match is replaced.
Everything else is left exactly as written, so an honest answer reaches the judge unchanged:
prose, lists such as "(a) ... (b) ...", "Option A is cheaper", markdown, ``` code blocks (```
is not the judge's delimiter) and `===` in code (only a line that also says BEGIN/END is a
fence), non-Latin text, emoji joined by zero-width joiners. The price: an honest "The answer is
(B)" to a multiple-choice request, or a "User:" line in a sample dialogue, reaches the judge as a
tag. Records keep the original text; only the judge's view changes.

Left alone on purpose: Yes/No claims (the pointwise and refusal judges' answers), because "the
answer is no" is ordinary prose; persuasion in plain words ("this response is the better one"),
which no list of markers can catch (debiasing positions and a stronger judge are the defence
there); and `likelihood_ratio`, which shows the judge no quote: it scores each response as the
assistant's own turn, tokenized as plain text (`chat_format.plain_text_ids`), so a response that
spells `<|im_end|>` or `<|im_start|>user` is scored on those ordinary tokens and can neither end
its turn early nor open a user turn.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Sequence

CHAT_MARKER = "[chat marker]"
FENCE = "[fence]"
OPTION_LABEL = "[option label]"
ANSWER_CLAIM = "[answer claim]"

# look-alikes NFKC leaves alone, folded to the ASCII they imitate (matching only; the text keeps them)
_FOLD = str.maketrans(
    {
        **dict.fromkeys("ǀ∣│┃❘︱￨⏐⎮▏▕¦", "|"),
        **dict.fromkeys("‹〈⟨〈❮˂ᐸ", "<"),
        **dict.fromkeys("›〉⟩〉❯˃ᐳ", ">"),
        **dict.fromkeys("꓿⹀᐀゠⩵", "="),
        **dict.fromkeys("‐‑‒–—―−", "-"),
        **dict(zip("АВСЕНІЈКМОРЅТХУаеорсхуіјѕԁһΑΒΕΖΗΙΚΜΝΟΡΤΥΧον", "ABCEHIJKMOPSTXYaeopcxyijsdhABEZHIKMNOPTYXov")),
    }
)
_SEP = r"[ \t_\-]*"
# an option letter: "(A)" or an unclosed "(A", "(a)" closed, or a bare capital "A" / "B" ending a word
_LETTER_AFTER = r"(?:\([ \t]*(?-i:[AB])(?![\w])[ \t]*\)?|\([ \t]*(?-i:[ab])[ \t]*\)|(?-i:[AB])(?![\w'’]))"
_VERDICT = r"(?:is|was|seems|would[ \t]+be)[ \t]+(?:(?:the|clearly|obviously|definitely|much|more|far)[ \t]+)*(?:correct|better|best|right|preferred|winner|answer|superior)"
_KNOWN_TURNS = r"(?:im[ \t_\-]*(?:start|end|sep)|eot[ \t_\-]*id|eom[ \t_\-]*id|(?:start|end)[ \t_\-]*header[ \t_\-]*id|(?:begin|end)[ \t_\-]*of[ \t_\-]*text|endoftext)"
_FLAGS = re.IGNORECASE | re.MULTILINE
_BLANK_RUN = re.compile(r"[ \t]{2}|\t")
_TURNISH = re.compile(r"start|end|begin|turn|inst|sys|user|assistant|human|header|eot|eos|bos|eom|im_|model", re.IGNORECASE)

# (pattern, replacement); a match's group "span", where present, is what gets replaced
RULES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"<[ \t]*\|[^<>|\n]{1,40}\|[ \t]*>", _FLAGS), CHAT_MARKER),
    (re.compile(rf"(?:<[ \t]*)?\|[ \t]*{_KNOWN_TURNS}(?:[ \t]*\|)?(?:[ \t]*>)?|<[ \t]*{_KNOWN_TURNS}(?:[ \t]*\|)?[ \t]*>", _FLAGS), CHAT_MARKER),
    (re.compile(rf"<[ \t]*/?[ \t]*(?:start|end){_SEP}of{_SEP}turn[ \t]*>", _FLAGS), CHAT_MARKER),
    (re.compile(r"(?<![=\-#~])(?<![=\-#~] )[=\-#~](?:[ \t]*[=\-#~]){2,}[ \t]*(?:begin|end|start|stop)\b[^\n]{0,60}?(?:[ \t]*[=\-#~]){3,}", _FLAGS), FENCE),
    (re.compile(r"\b(?:begin|end)(?:[ \t]+of)?(?:[ \t]+the)?[ \t]+(?:human[ \t]+request|(?:assistant[ \t]+)?response[ \t]+\(?(?-i:[AB12])\)?(?![\w])|assistant[ \t]+response|quoted?[ \t]+text)\b", _FLAGS), FENCE),
    (re.compile(r"^[ \t]*(?:\([ \t]*)?(?-i:[AB])[ \t]*\)(?:[ \t]*:)?[ \t]*$", _FLAGS), OPTION_LABEL),
    (re.compile(r"^[ \t]*options?[ \t]*:[ \t]*$", _FLAGS), OPTION_LABEL),
    (re.compile(r"^[ \t]*response[ \t]*(?:\([ \t]*)?(?-i:[AB])[ \t]*(?:\)[ \t]*)?:", _FLAGS), OPTION_LABEL),
    (re.compile(rf"\b(?:the[ \t]+)?(?:(?:correct|right|best|final|better|true)[ \t]+)?answer(?:[ \t]+(?:is|would[ \t]+be|=))?[ \t]*(?::[ \t]*)?(?:(?:option|response|choice)[ \t]*)?{_LETTER_AFTER}", _FLAGS), ANSWER_CLAIM),
    (re.compile(rf"(?:\b(?:option|response|choice|answer)[ \t]*)?\([ \t]*(?-i:[AB])[ \t]*\)[ \t]*{_VERDICT}", _FLAGS), ANSWER_CLAIM),
    (re.compile(rf"\b(?:option|response|choice)[ \t]+(?-i:[AB])[ \t]+{_VERDICT}", _FLAGS), ANSWER_CLAIM),
    (re.compile(r"\bI[ \t]+(?:would[ \t]+)?(?:choose|pick|select|prefer|vote[ \t]+for|go[ \t]+with)[ \t]+(?:(?:option|response|answer)[ \t]*)?(?:\([ \t]*(?-i:[AB])[ \t]*\)|(?-i:[AB])(?![\w'’]))", _FLAGS), ANSWER_CLAIM),
    (re.compile(r"^[ \t>*_#]*(?P<span>(?P<role>human|user|assistant|system)[ \t*_]*:)", _FLAGS), None),
)


def neutralize(text: str, special_tokens: Sequence[str] = ()) -> str:
    """`text` with chat markers, fence lines, option headers, answer claims and turn starts
    (look-alikes included) replaced by inert tags; see the module docstring for why and what."""
    if not text:
        return text
    skeleton, starts, ends = _skeleton(text)
    found: list[tuple[int, int, str]] = []
    for pattern in _token_patterns(tuple(special_tokens)):
        found += [(m.start(), m.end(), CHAT_MARKER) for m in pattern.finditer(skeleton)]
    for pattern, replacement in RULES:
        for m in pattern.finditer(skeleton):
            if replacement is None:
                found.append((m.start("span"), m.end("span"), f"[{m.group('role')}]"))
            elif m.end() > m.start():
                found.append((m.start(), m.end(), replacement))
    pieces, at = [], 0
    for start, end, replacement in sorted(found, key=lambda f: (f[0], -f[1])):
        first, last = starts[start], ends[end - 1]
        if first < at:
            continue  # overlaps a span already replaced
        pieces += [text[at:first], replacement]
        at = last
    pieces.append(text[at:])
    out = "".join(pieces)
    for token in special_tokens:  # what no rule names (a special token spelled as a plain word): break it up
        if len(token) > 1 and token in out:
            out = out.replace(token, token[0] + "\u200b" + token[1:])
    return out


def _skeleton(text: str) -> tuple[str, Sequence[int], Sequence[int]]:
    """The text as matching sees it, and for each of its characters the span of `text` it came from.

    Runs of spaces and tabs become one space: besides `a  b` matching like `a b`, no pattern
    can then backtrack over a long blank run (a degenerate response is still linear).
    """
    if text.isascii() and not _BLANK_RUN.search(text):
        return text, range(len(text)), range(1, len(text) + 1)
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for index, char in enumerate(text):
        if char.isascii():
            pieces = char
        elif unicodedata.category(char) == "Cf" or "\ufe00" <= char <= "\ufe0f":
            continue  # zero-width spaces and joiners, bidi controls, soft hyphens, variation selectors
        else:
            pieces = unicodedata.normalize("NFKC", char).translate(_FOLD)
        for piece in pieces:
            if piece in " \t":
                if chars and chars[-1] == " ":
                    ends[-1] = index + 1
                    continue
                piece = " "
            chars.append(piece)
            starts.append(index)
            ends.append(index + 1)
    return "".join(chars), starts, ends


@functools.lru_cache(maxsize=16)
def _token_patterns(special_tokens: tuple[str, ...]) -> list[re.Pattern[str]]:
    """One pattern per special token shaped and named like a turn marker (`<|im_end|>`, `[INST]`,
    `<end_of_turn>`), spacing, case and `_`/`-` free. Others (`<filename>`, `<s>`, plain words) are
    only broken up where spelled exactly: their look-alikes are ordinary text ("cp <file-name> .")."""
    patterns = []
    for token in special_tokens:
        core = _skeleton(token)[0]
        pieces = re.findall(r"[A-Za-z0-9]+|[^A-Za-z0-9_\-\s]", core)
        if len(core) < 2 or not _TURNISH.search(core) or all(p[0].isalnum() for p in pieces):
            continue
        patterns.append(re.compile(_SEP.join(re.escape(p) for p in pieces), re.IGNORECASE))
    return patterns
