"""One tokenization path for every stage that scores a (prompt, response) pair.

PPO builds `query_ids + response_ids` where the query is the chat template up to the
assistant header and the response ends at the end-of-turn token (`models.end_of_turn_id`,
EOS for templates without one); the reward model reads its score at the last non-pad token.
So reward-model training, PPO and evaluation all build exactly those ids here: the template's
own tokens, no second BOS, and the end-of-turn token the policy emits (not the newline some
templates add after it).

A response is text a model wrote, so it is tokenized as plain text (`plain_text_ids`): where it
spells a special token ("<|im_end|>", "<|im_start|>user") the spelling becomes ordinary tokens,
never the special token, so a response cannot end its own turn early or open a fake user turn
inside the scored ids. Only the chat template's own markers, and the one end-of-turn token appended
here, are special tokens. (A generated response never holds the real token as text: generation
stops at the end of turn and decodes without special tokens.)
"""

from __future__ import annotations

from typing import Any

from cai.generation import render_chat
from cai.models import end_of_turn_id, end_of_turn_ids


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The chat template up to and including the assistant header (what the policy sees)."""
    return render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def plain_text_ids(tokenizer: Any, text: str) -> list[int]:
    """`text` as ordinary tokens: a special token's spelling inside it is split into plain pieces.

    A fast tokenizer implements this by switching its shared backend per call, so threads that share
    a tokenizer must not tokenize concurrently (`reward.function.ConstitutionalReward` holds its lock).
    """
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def response_ids(tokenizer: Any, response: str) -> list[int]:
    """The response's tokens (`plain_text_ids`) followed by exactly one end-of-turn token (`models.end_of_turn_id`:
    `<|im_end|>`, `<end_of_turn>`, ..., else EOS), as a finished rollout ends.

    End-of-turn or EOS spellings that close the text (one decoded with its special tokens) are that
    one end, not text before it; the same spellings anywhere else stay text."""
    ends = [token for token in tokenizer.convert_ids_to_tokens(end_of_turn_ids(tokenizer)) if token]
    while ending := next((token for token in ends if response.endswith(token)), None):
        response = response[: -len(ending)]
    return plain_text_ids(tokenizer, response) + [end_of_turn_id(tokenizer)]


def scored_ids(tokenizer: Any, prompt: str, response: str, *, max_length: int | None = None) -> list[int]:
    """prompt + response + EOS; when too long the prompt is cut from the left so the EOS survives."""
    return fit_ids(prompt_ids(tokenizer, prompt), response_ids(tokenizer, response), max_length=max_length)


def fit_ids(head: list[int], tail: list[int], *, max_length: int | None) -> list[int]:
    """head + tail within max_length, cutting the head from the left first (then the tail's start) so the EOS survives."""
    if max_length is not None and len(head) + len(tail) > max_length:
        keep = max(max_length - len(tail), 0)
        head = head[len(head) - keep :] if keep else []
        tail = tail[-max_length:]
    return head + tail
