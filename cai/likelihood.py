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


def completion_logprobs(model: Any, tokenizer: Any, contexts: Sequence[Messages], completions: Sequence[str], *, batch_size: int = 8, share_prefixes: bool = True) -> list[float]:
    """Mean per-token log-probability of each completion as the assistant's reply to its context.

    A (context, completion) asked for more than once is scored once: an eval judge sees each
    model's response in every pair it is part of, under the same base and balance contexts.
    With `share_prefixes`, completions of one context are scored on one pass over that context
    (its KV cache repeated for each of them): a judge scores every response of a prompt under
    the same few contexts, and the context is a third or more of the tokens.
    """
    from cai.chat_format import plain_text_ids
    from cai.generation import render_chat

    rows: list[tuple[tuple[int, ...], list[int]]] = []
    row_of: dict[tuple[str, str], int] = {}
    prefix_of: dict[str, tuple[int, ...]] = {}
    wanted = []
    for context, completion in zip(contexts, completions, strict=True):
        rendered = render_chat(tokenizer, context)
        key = (rendered, completion)
        if key not in row_of:
            row_of[key] = len(rows)
            if rendered not in prefix_of:
                prefix_of[rendered] = tuple(tokenizer(rendered, add_special_tokens=False)["input_ids"])
            body = plain_text_ids(tokenizer, completion) or [tokenizer.eos_token_id]
            rows.append((prefix_of[rendered], body))
        wanted.append(row_of[key])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    scores = _shared_prefix_scores(model, rows, pad, batch_size) if share_prefixes else _full_scores(model, rows, pad, batch_size)
    return [scores[i] for i in wanted]


def _full_scores(model: Any, rows: Sequence[tuple[Sequence[int], list[int]]], pad: int, batch_size: int) -> list[float]:
    """Every (prefix, completion) sequence run from its first token, right padded, longest first."""
    import torch

    scores = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start : start + batch_size]
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            sequence = [*rows[i][0], *rows[i][1]]
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
    return scores


def _shared_prefix_scores(model: Any, rows: Sequence[tuple[Sequence[int], list[int]]], pad: int, batch_size: int) -> list[float]:
    """Each distinct prefix run once per batch (left padded, KV cache kept), then its completions
    (right padded) continue from the cache repeated for each of them.

    A batch holds whole groups of rows sharing a prefix, at most `batch_size` completions (a
    larger group is split, its prefix then run once per part).
    """
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prefix, _) in enumerate(rows):
        groups.setdefault(tuple(prefix), []).append(i)
    size = max(1, batch_size)
    parts = [(prefix, members[k : k + size]) for prefix, members in groups.items() for k in range(0, len(members), size)]
    parts.sort(key=lambda part: -(len(part[0]) + max(len(rows[i][1]) for i in part[1])))
    batches: list[list[tuple[tuple[int, ...], list[int]]]] = []
    for part in parts:
        if batches and sum(len(members) for _, members in batches[-1]) + len(part[1]) <= size:
            batches[-1].append(part)
        else:
            batches.append([part])
    scores = [0.0] * len(rows)
    device = model.device
    parameters = inspect.signature(model.forward).parameters
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    cache_argument = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5.24
    for batch in batches:
        prefix_width = max(len(prefix) for prefix, _ in batch)
        prefix_ids = torch.full((len(batch), prefix_width), pad, dtype=torch.long)
        prefix_mask = torch.zeros((len(batch), prefix_width), dtype=torch.long)
        for g, (prefix, _) in enumerate(batch):
            prefix_ids[g, prefix_width - len(prefix) :] = torch.tensor(prefix)
            prefix_mask[g, prefix_width - len(prefix) :] = 1
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), position_ids=positions.to(device), use_cache=True, **keep_last)
        members = [(g, i) for g, (_, group) in enumerate(batch) for i in group]
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if not hasattr(cache, "batch_select_indices"):  # a model without transformers' Cache: score this batch in full
            full = _full_scores(model, [rows[i] for _, i in members], pad, batch_size)
            for (_, i), value in zip(members, full):
                scores[i] = value
            continue
        owner = torch.tensor([g for g, _ in members], device=device)
        cache.batch_select_indices(owner)
        body_width = max(len(rows[i][1]) for _, i in members)
        body_ids = torch.full((len(members), body_width), pad, dtype=torch.long)
        body_mask = torch.zeros((len(members), body_width), dtype=torch.long)
        for row, (_, i) in enumerate(members):
            body = rows[i][1]
            body_ids[row, : len(body)] = torch.tensor(body)
            body_mask[row, : len(body)] = 1
        starts = torch.tensor([len(batch[g][0]) for g, _ in members])
        body_positions = starts.unsqueeze(1) + torch.arange(body_width).unsqueeze(0)
        mask = torch.cat([prefix_mask.to(device)[owner], body_mask.to(device)], dim=1)
        with torch.inference_mode():
            logits = model(input_ids=body_ids.to(device), attention_mask=mask, position_ids=body_positions.to(device), use_cache=True, **{cache_argument: cache}).logits
        # the prefix's last position predicts a completion's first token, completion position k its token k + 1
        logits = torch.cat([out.logits[:, -1:][owner], logits[:, :-1]], dim=1).float()
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, body_ids.to(device).unsqueeze(-1)).squeeze(-1)
        for row, (_, i) in enumerate(members):
            scores[i] = float(token_logprobs[row, : len(rows[i][1])].mean())
    return scores


def principle_log_ratio(model: Any, tokenizer: Any, requests: Sequence[str], principle_turns: Sequence[str], completions: Sequence[str], *, batch_size: int = 8) -> list[float]:
    """mean log p(c | principle system turn, request) - mean log p(c | request), per completion."""
    with_principle = [[{"role": "system", "content": p}, {"role": "user", "content": r}] for p, r in zip(principle_turns, requests, strict=True)]
    without = [[{"role": "user", "content": r}] for r in requests]
    conditioned = completion_logprobs(model, tokenizer, with_principle, completions, batch_size=batch_size)
    plain = completion_logprobs(model, tokenizer, without, completions, batch_size=batch_size)
    return [a - b for a, b in zip(conditioned, plain)]
