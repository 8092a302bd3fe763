"""One batched generation interface for every stage, with a transformers and a vLLM backend.

Work is split across accelerate processes in contiguous pieces and gathered back by index,
so 1 and N processes give the same records under greedy decoding. A sampled completion is
drawn from its own generator seeded by (seed, key) — the key names the prompt and sample,
e.g. its id — so it does not depend on batching, chunking or the number of processes
(transformers' `generate` has one RNG per batch, so the draw is done by `RowSampler`).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any, Protocol, Sequence

from cai.config import Backend, GenerationConfig, check_choice
from cai.errors import CaiError
from cai.fingerprint import digest
from cai.models import end_of_turn_ids

BACKENDS = typing.get_args(Backend)


class Generator(Protocol):
    seed: int
    settings: GenerationConfig

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int] | None = None, desc: str = "") -> list[str]:
        """Completions for fully rendered prompt texts (chat template already applied); `seeds` seed each sample."""
        ...


def sample_seed(seed: int, key: str | int) -> int:
    """The sampling seed of one completion: a function of the run seed and the completion's key only."""
    return int(digest(f"{seed}:{key}"), 16) % (2**63)


class RowSampler:
    """A logits processor that samples each row with its own torch generator (temperature, top-p).

    It returns scores that are -inf except at the drawn token, so greedy decoding after it
    picks exactly that token; transformers then adds no sampling of its own.
    """

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float):
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self.generators: list[Any] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        chosen = torch.stack([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The chat template as text; tokenise it later with `add_special_tokens=False` to avoid a double BOS."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Trim at the first stop string (generate stops after it, so the marker itself is included)."""
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


class TransformersGenerator:
    """Left padding, length-bucketed batches, KV cache, stop on EOS and stop strings."""

    def __init__(self, model: Any, tokenizer: Any, settings: GenerationConfig, *, seed: int = 0, show_progress: bool = True):
        if tokenizer.padding_side != "left":
            raise ValueError("generation needs a left-padded tokenizer (models.load_tokenizer does this)")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.seed = seed
        self.show_progress = show_progress
        self.stop_ids = end_of_turn_ids(tokenizer, model)  # a response ends at the template's end of turn, not only at EOS
        self.cut_prompts: list[int] = []  # original lengths of prompts cut to fit; shared with `with_settings` copies

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int] | None = None, desc: str = "") -> list[str]:
        import torch
        from tqdm.auto import tqdm
        from transformers import LogitsProcessorList

        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [sample_seed(self.seed, i) for i in range(len(prompts))]
        encoded = [self._encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        outputs: list[str] = [""] * len(prompts)
        size = max(1, self.settings.batch_size)
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        self.model.eval()
        for batch in tqdm(batches, desc=desc or "generate", disable=not self.show_progress, leave=False):
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt", padding=True)
            padded = {k: v.to(self.model.device) for k, v in padded.items()}
            sampler = None
            if self.settings.temperature > 0:
                sampler = LogitsProcessorList([RowSampler([seeds[i] for i in batch], temperature=self.settings.temperature, top_p=self.settings.top_p)])
            with torch.inference_mode():
                generated = self.model.generate(
                    **padded,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=False,
                    logits_processor=sampler,
                    top_k=None,
                    repetition_penalty=self.settings.repetition_penalty if self.settings.repetition_penalty != 1.0 else None,
                    stop_strings=list(self.settings.stop) or None,
                    tokenizer=self.tokenizer if self.settings.stop else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.stop_ids,
                    use_cache=True,
                )
            new_tokens = generated[:, padded["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for position, text in zip(batch, texts):
                outputs[position] = cut_at_stop(text, self.settings.stop).strip()
        return outputs

    def _encode(self, prompt: str) -> list[int]:
        return fit_prompt(self.tokenizer(prompt, add_special_tokens=False)["input_ids"], self.settings.max_prompt_length, self.cut_prompts)


def fit_prompt(ids: list[int], limit: int, cut: list[int]) -> list[int]:
    """The last `limit` tokens (the request and the turn opening matter most), noting the original length in `cut`."""
    if limit and len(ids) > limit:
        cut.append(len(ids))
        return ids[-limit:]
    return ids


class VLLMGenerator:
    """vLLM engine for GPU runs; imported only when selected, so CPU installs never need it."""

    def __init__(self, model_path: str, tokenizer: Any, settings: GenerationConfig, *, seed: int = 0):
        try:
            from vllm import LLM
        except ImportError:
            raise CaiError("generation.backend: 'vllm' is selected but vllm is not installed; pip install 'cai[vllm]' or use 'transformers'") from None
        self.tokenizer = tokenizer
        self.settings = settings
        self.seed = seed
        self.engine = LLM(model=model_path, seed=seed, gpu_memory_utilization=settings.vllm_gpu_memory_utilization)
        self.cut_prompts: list[int] = []

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int] | None = None, desc: str = "") -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [sample_seed(self.seed, i) for i in range(len(prompts))]
        params = [
            SamplingParams(
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                repetition_penalty=self.settings.repetition_penalty,
                max_tokens=self.settings.max_new_tokens,
                stop=list(self.settings.stop) or None,
                stop_token_ids=end_of_turn_ids(self.tokenizer),
                seed=seed,
            )
            for seed in seeds
        ]
        token_prompts = [{"prompt_token_ids": fit_prompt(self.tokenizer(p, add_special_tokens=False)["input_ids"], self.settings.max_prompt_length, self.cut_prompts)} for p in prompts]
        results = self.engine.generate(token_prompts, params, use_tqdm=bool(desc))
        return [r.outputs[0].text.strip() for r in results]


def build_generator(model: Any, tokenizer: Any, settings: GenerationConfig, *, model_path: str, seed: int, accelerator: Any) -> Generator:
    backend = check_choice(settings.backend, BACKENDS, "generation.backend")
    if backend == "vllm":
        return VLLMGenerator(model_path, tokenizer, settings, seed=seed)
    return TransformersGenerator(model, tokenizer, settings, seed=seed, show_progress=accelerator.is_main_process)


def with_settings(generator: Generator, settings: GenerationConfig) -> Generator:
    """The same model (or vLLM engine) with other decoding settings; nothing is loaded again."""
    other = copy.copy(generator)
    other.settings = settings
    return other


def generate_sharded(generator: Generator, prompts: Sequence[str], accelerator: Any, *, keys: Sequence[str | int] | None = None, desc: str = "") -> list[str]:
    """Split prompts across processes, generate, and gather back in the input order.

    `keys` name each completion for its sampling seed (default: its position in `prompts`);
    pass stable ones (a prompt id and sample number) to make samples independent of chunking.
    """
    from accelerate.utils import gather_object

    keys = list(keys) if keys is not None else list(range(len(prompts)))
    if len(keys) != len(prompts):
        raise ValueError(f"generate_sharded: {len(keys)} keys for {len(prompts)} prompts")
    seeds = [sample_seed(generator.seed, key) for key in keys]
    indexed = list(enumerate(prompts))
    with accelerator.split_between_processes(indexed) as mine:
        mine = list(mine)
        texts = generator.generate([p for _, p in mine], seeds=[seeds[i] for i, _ in mine], desc=desc)
        local = list(zip([i for i, _ in mine], texts))
    gathered = gather_object(local) if accelerator.num_processes > 1 else local
    by_index = dict(gathered)
    if len(by_index) != len(prompts):
        raise RuntimeError(f"generation gathered {len(by_index)} results for {len(prompts)} prompts")
    return [by_index[i] for i in range(len(prompts))]


class ChatCompleter:
    """One model as the stages use it: chat completion batched and sharded, plus likelihood scoring.

    Plain calls decode with `settings`; keyed ones (best-of-n samples) sample at
    `sample_temperature` with a seed per key, so they do not depend on chunking or processes.
    """

    def __init__(self, reference: str, settings: GenerationConfig, seed: int, accelerator: Any, *, setting: str, sample_temperature: float = 1.0):
        from cai import models

        ref = models.resolve(reference, setting=setting)
        self.ref = ref
        self.accelerator = accelerator
        self.tokenizer = models.load_tokenizer(ref)
        self.model = None
        if settings.backend == "transformers":
            self.model = models.load_causal_lm(ref, dtype=models.default_dtype(), device=accelerator.device)
            models.sync_pad_token(self.model, self.tokenizer)
        self.greedy = build_generator(self.model, self.tokenizer, settings, model_path=ref.path, seed=seed, accelerator=accelerator)
        self.sampler = with_settings(self.greedy, dataclasses.replace(settings, temperature=sample_temperature))
        self.batch_size = settings.batch_size

    def __call__(self, conversations: list[list[dict[str, str]]], desc: str, *, openings: list[str] | None = None, keys: list[str] | None = None) -> list[str]:
        openings = openings or [""] * len(conversations)
        texts = [render_chat(self.tokenizer, messages) + opening for messages, opening in zip(conversations, openings, strict=True)]
        generator = self.sampler if keys is not None else self.greedy
        return generate_sharded(generator, texts, self.accelerator, keys=keys, desc=desc)

    def cut_prompt_count(self) -> int:
        """Prompts cut to `generation.max_prompt_length` so far, over every process (call it on all of them)."""
        from accelerate.utils import gather_object

        local = [len(self.greedy.cut_prompts)]
        return sum(gather_object(local)) if self.accelerator.num_processes > 1 else local[0]

    def likelihood_ratio(self, requests: list[str], principle_turns: list[str], texts: list[str]) -> list[float]:
        """log p(text | principle, request) - log p(text | request), per text (cai/likelihood.py)."""
        from cai import models
        from cai.likelihood import principle_log_ratio

        if self.model is None:  # vLLM generates; scoring needs the transformers model
            self.model = models.load_causal_lm(self.ref, dtype=models.default_dtype(), device=self.accelerator.device)
        return sharded_map(lambda rows: principle_log_ratio(self.model, self.tokenizer, *zip(*rows), batch_size=self.batch_size) if rows else [], list(zip(requests, principle_turns, texts)), self.accelerator)


def sharded_map(function: Any, items: list[Any], accelerator: Any) -> list[Any]:
    """`function` over contiguous pieces of `items` on each process, gathered back in order."""
    from accelerate.utils import gather_object

    indexed = list(enumerate(items))
    with accelerator.split_between_processes(indexed) as mine:
        mine = list(mine)
        local = list(zip([i for i, _ in mine], function([item for _, item in mine])))
    gathered = gather_object(local) if accelerator.num_processes > 1 else local
    by_index = dict(gathered)
    return [by_index[i] for i in range(len(items))]
