"""Log-likelihood of a completion under a conversation, and the principle likelihood ratio.

`principle_log_ratio` is how much more likely a completion becomes when a principle is in
context: mean log p(completion | principle turn, request) - mean log p(completion | request).
It needs no judging ability, only the model's own distribution, so it still separates
safe from compliant replies on a 135M model where option-letter judging is at chance. Means
over tokens (not sums) keep it from favouring short or long completions.

The completion is tokenized as plain text (`chat_format.plain_text_ids`): a completion that spells
"<|im_end|>" or "<|im_start|>user" is scored on those ordinary tokens, not on a real end of turn or
a fake user turn inside the scored sequence. The context keeps the chat template's special tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

Messages = list[dict[str, str]]


def completion_logprobs(model: Any, tokenizer: Any, contexts: Sequence[Messages], completions: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """Mean per-token log-probability of each completion as the assistant's reply to its context.

    A (context, completion) asked for more than once is scored once: an eval judge sees each
    model's response in every pair it is part of, under the same base and balance contexts.
    """
    import torch

    from cai.chat_format import plain_text_ids
    from cai.generation import render_chat

    rows: list[tuple[list[int], list[int]]] = []
    row_of: dict[tuple[str, str], int] = {}
    wanted = []
    for context, completion in zip(contexts, completions, strict=True):
        rendered = render_chat(tokenizer, context)
        key = (rendered, completion)
        if key not in row_of:
            row_of[key] = len(rows)
            prefix = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            body = plain_text_ids(tokenizer, completion) or [tokenizer.eos_token_id]
            rows.append((prefix, body))
        wanted.append(row_of[key])
    scores = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start : start + batch_size]
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            sequence = rows[i][0] + rows[i][1]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        # logits only where some row's completion is predicted: the lm head over a long prompt is most of the cost
        first = min(len(rows[i][0]) for i in batch) - 1
        extra = {"logits_to_keep": width - first} if keep_last else {}
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **extra).logits
        logits = logits[:, -(width - first) :].float()  # position first + k predicts token first + k + 1
        targets = ids[:, first + 1 :].to(model.device)
        token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(batch):
            prefix_length, body_length = len(rows[i][0]), len(rows[i][1])
            span = token_logprobs[row, prefix_length - 1 - first : prefix_length - 1 - first + body_length]
            scores[i] = float(span.mean())
    return [scores[i] for i in wanted]


def principle_log_ratio(model: Any, tokenizer: Any, requests: Sequence[str], principle_turns: Sequence[str], completions: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """mean log p(c | principle system turn, request) - mean log p(c | request), per completion."""
    with_principle = [[{"role": "system", "content": p}, {"role": "user", "content": r}] for p, r in zip(principle_turns, requests, strict=True)]
    without = [[{"role": "user", "content": r}] for r in requests]
    conditioned = completion_logprobs(model, tokenizer, with_principle, completions, batch_size=batch_size)
    plain = completion_logprobs(model, tokenizer, without, completions, batch_size=batch_size)
    return [a - b for a, b in zip(conditioned, plain)]
