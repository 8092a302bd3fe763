"""The constitutional reward model as a plain function: trl's `reward_funcs`, and the scorer behind `cai serve-reward`.

    from cai.reward.function import ConstitutionalReward
    reward = ConstitutionalReward.from_pretrained("runs/demo/reward_model")
    GRPOTrainer(model=..., reward_funcs=reward, ...)        # or RLOOTrainer; conversational or plain prompts
    reward(prompts=["How do I pick a lock?"], completions=["I can't help with that."])  # -> [0.73]

Every (prompt, response) is scored on the ids cai's reward stage trained on and trl's PPO
scores (cai/chat_format.py): the chat template up to the assistant header, the response,
exactly one end-of-turn token (`models.end_of_turn_id`: `<|im_end|>`, `<end_of_turn>`, ...,
EOS where the template has none), the score read there. Handing trl the reward model itself
would render the whole conversation with the chat template, whose assistant turn ends with a
newline after that token, so the score would be read one token past where it was trained.

A plain-text prompt is read as one user message (the reward model judges a request and its
answer), a conversational one is rendered with the chat template as it stands, multi-turn
included. A completion without EOS (trl passes `completion_ids`) loses `missing_eos_penalty`,
and one that repeats itself (`cai.evaluation.metrics.loops`) loses `loop_penalty`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from cai import models
from cai.chat_format import fit_ids, prompt_ids, response_ids

Monitor = Callable[[Sequence[Sequence[int]], int, list[float]], dict[str, float]]


def message_content(value: Any, *, what: str) -> str:
    """A plain string, or the content of the last message of a conversational value."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise ValueError(f"{what} must be a string or a list of {{'role', 'content'}} messages, got {type(value).__name__}")


class ConstitutionalReward:
    """A callable trl accepts in `reward_funcs`: (prompts, completions, completion_ids=None, **kwargs) -> list[float]."""

    __name__ = "constitutional_reward"  # trl names the reward's log columns after its callables

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int | None = 1024, batch_size: int = 16, missing_eos_penalty: float | None = None, loop_penalty: float | None = None, monitor: Monitor | None = None):
        from cai.reward.model import check_padding

        check_padding(tokenizer, setting="reward_model")
        if getattr(model.config, "pad_token_id", None) != tokenizer.pad_token_id:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.missing_eos_penalty = missing_eos_penalty
        self.loop_penalty = loop_penalty
        self.monitor = monitor
        self.lock = threading.Lock()  # one model: concurrent callers (the HTTP service's threads) take turns

    @classmethod
    def from_pretrained(cls, reference: str, *, device: str | None = None, dtype: Any = None, **kwargs: Any) -> ConstitutionalReward:
        """Load a reward model folder (cai's `reward_model/`, a hub id, or a LoRA adapter on a causal LM) for scoring."""
        import torch

        from cai.reward.model import load_reward_base

        ref = models.resolve(str(reference), setting="reward_model")
        tokenizer = models.load_tokenizer(ref, padding_side="right")
        model = load_reward_base(ref, dtype=dtype or models.default_dtype(), setting="reward_model")
        model.config.pad_token_id = tokenizer.pad_token_id
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.requires_grad_(False).eval().to(device), tokenizer, **kwargs)

    # ------------------------------------------------------------ ids

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Template up to the assistant header: a string is one user message, a message list is rendered as it is."""
        if isinstance(prompt, str):
            return prompt_ids(self.tokenizer, prompt)
        if isinstance(prompt, dict):
            prompt = [prompt]
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)):
            raise ValueError(f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}")
        from cai.generation import render_chat

        return self.tokenizer(render_chat(self.tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]

    def ids(self, prompt: Any, completion: Any) -> list[int]:
        """`chat_format.scored_ids` for any prompt shape: template + response + one EOS, prompt cut from the left to fit."""
        return self.ids_and_response_length(prompt, completion)[0]

    def ids_and_response_length(self, prompt: Any, completion: Any) -> tuple[list[int], int]:
        """`ids`, and how many of them are the response's (what a length-corrected reward model needs)."""
        response = response_ids(self.tokenizer, message_content(completion, what="a completion"))
        ids = fit_ids(self.prompt_ids(prompt), response, max_length=self.max_length)
        return ids, min(len(response), len(ids))

    def text_ids(self, query: str, prompt: str | None = None) -> list[int]:
        return self.text_ids_and_response_length(query, prompt)[0]

    def text_ids_and_response_length(self, query: str, prompt: str | None = None) -> tuple[list[int], int]:
        """Ids for a rendered text (OpenRLHF's remote reward protocol): `query` is template + response, `prompt` its templated head.

        Padding and EOS strings decoded with the sequence are removed; the response gets one EOS.
        When `prompt` is a prefix of `query` the two are tokenized apart, as a rollout builds them;
        otherwise the whole text is tokenized at once (OpenRLHF's own server does the same).
        """
        tokenizer = self.tokenizer
        query = strip_special(query, tokenizer, head=True, tail=False)
        head = strip_special(prompt, tokenizer, head=True, tail=False) if prompt else ""
        if head and query.startswith(head):
            prompt_part, response = head, query[len(head) :]
        else:
            prompt_part, response = "", query
        response = strip_special(response, tokenizer, head=False, tail=True)
        ids = tokenizer(prompt_part, add_special_tokens=False)["input_ids"] if prompt_part else []
        tail = response_ids(tokenizer, response)
        fitted = fit_ids(ids, tail, max_length=self.max_length)
        return fitted, min(len(tail), len(fitted))

    # ------------------------------------------------------------ scoring

    def score_ids(self, id_lists: Sequence[Sequence[int]], response_lengths: Sequence[int] | None = None) -> list[float]:
        """Reward of ready-made ids; a length-corrected reward model also needs each one's response length."""
        from cai.reward.model import score_ids

        if not id_lists:
            return []
        with self.lock:
            return score_ids(self.model, id_lists, pad_token_id=self.tokenizer.pad_token_id, batch_size=self.batch_size, response_lengths=response_lengths)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        """Raw reward of each (prompt, completion), no penalty."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion")
        with self.lock:  # a fast tokenizer switches its shared backend per call (chat_format.plain_text_ids)
            parts = [self.ids_and_response_length(p, c) for p, c in zip(prompts, completions)]
        return self.score_ids([ids for ids, _ in parts], [length for _, length in parts])

    def score_texts(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        heads = list(prompts) if prompts else [None] * len(queries)
        with self.lock:
            parts = [self.text_ids_and_response_length(q, p) for q, p in zip(queries, heads, strict=True)]
        return self.score_ids([ids for ids, _ in parts], [length for _, length in parts])

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None, log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        raw = self.score(prompts, completions)
        if self.loop_penalty:
            from cai.evaluation.metrics import loops

            looped = [loops(message_content(c, what="a completion")) for c in completions]
            if log_metric is not None and looped:
                log_metric("monitor/loop_penalized", sum(looped) / len(looped))
            penalised = [score - self.loop_penalty * flag for score, flag in zip(raw, looped)]
        else:
            penalised = raw
        if completion_ids is None:
            return penalised
        end, ends = models.end_of_turn_id(self.tokenizer), set(models.end_of_turn_ids(self.tokenizer))
        if log_metric is not None and self.monitor is not None:
            for name, value in self.monitor(completion_ids, end, raw).items():
                log_metric(name, value)
        penalty = self.missing_eos_penalty or 0.0
        return [score - penalty * (not (ids and ids[-1] in ends)) for score, ids in zip(penalised, completion_ids, strict=True)]


def strip_special(text: str, tokenizer: Any, *, head: bool, tail: bool) -> str:
    """Remove the pad strings a decoded rollout carries before the text (`head`) and the pad/EOS/end-of-turn strings after it (`tail`)."""
    pad = tokenizer.pad_token
    ends = (pad, *tokenizer.convert_ids_to_tokens(models.end_of_turn_ids(tokenizer)))
    while head and pad and text.startswith(pad):
        text = text[len(pad) :]
    while tail and any(t and text.endswith(t) for t in ends):
        text = text[: -len(next(t for t in ends if t and text.endswith(t)))]
    return text
