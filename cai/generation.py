"""One batched generation interface for every stage, with a transformers and a vLLM backend.

Work is split across accelerate processes in contiguous pieces and gathered back by index,
so 1 and N processes give the same records under greedy decoding. Sampling is seeded per
prompt index (not per process), for the same reason.
"""

from __future__ import annotations

import typing
from typing import Any, Protocol, Sequence

from cai.config import Backend, GenerationConfig, check_choice
from cai.errors import CaiError

BACKENDS = typing.get_args(Backend)


class Generator(Protocol):
    def generate(self, prompts: Sequence[str], *, indices: Sequence[int] | None = None, desc: str = "") -> list[str]:
        """Completions for fully rendered prompt texts (chat template already applied)."""
        ...


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

    def generate(self, prompts: Sequence[str], *, indices: Sequence[int] | None = None, desc: str = "") -> list[str]:
        import torch
        from tqdm.auto import tqdm

        if not prompts:
            return []
        indices = list(indices) if indices is not None else list(range(len(prompts)))
        encoded = [self._encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), indices[i]))
        outputs: list[str] = [""] * len(prompts)
        size = max(1, self.settings.batch_size)
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        self.model.eval()
        for batch in tqdm(batches, desc=desc or "generate", disable=not self.show_progress, leave=False):
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt", padding=True)
            padded = {k: v.to(self.model.device) for k, v in padded.items()}
            sampling = self.settings.temperature > 0
            if sampling:
                torch.manual_seed(self.seed * 1_000_003 + min(indices[i] for i in batch))
            with torch.inference_mode():
                generated = self.model.generate(
                    **padded,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=sampling,
                    temperature=self.settings.temperature if sampling else None,
                    top_p=self.settings.top_p if sampling else None,
                    top_k=None,
                    repetition_penalty=self.settings.repetition_penalty if self.settings.repetition_penalty != 1.0 else None,
                    stop_strings=list(self.settings.stop) or None,
                    tokenizer=self.tokenizer if self.settings.stop else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    use_cache=True,
                )
            new_tokens = generated[:, padded["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for position, text in zip(batch, texts):
                outputs[position] = cut_at_stop(text, self.settings.stop).strip()
        return outputs

    def _encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = self.settings.max_prompt_length
        return ids[-limit:] if limit and len(ids) > limit else ids


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

    def generate(self, prompts: Sequence[str], *, indices: Sequence[int] | None = None, desc: str = "") -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        indices = list(indices) if indices is not None else list(range(len(prompts)))
        params = [
            SamplingParams(
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                repetition_penalty=self.settings.repetition_penalty,
                max_tokens=self.settings.max_new_tokens,
                stop=list(self.settings.stop) or None,
                seed=self.seed * 1_000_003 + index,
            )
            for index in indices
        ]
        token_prompts = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        results = self.engine.generate(token_prompts, params, use_tqdm=bool(desc))
        return [r.outputs[0].text.strip() for r in results]


def build_generator(model: Any, tokenizer: Any, settings: GenerationConfig, *, model_path: str, seed: int, accelerator: Any) -> Generator:
    backend = check_choice(settings.backend, BACKENDS, "generation.backend")
    if backend == "vllm":
        return VLLMGenerator(model_path, tokenizer, settings, seed=seed)
    return TransformersGenerator(model, tokenizer, settings, seed=seed, show_progress=accelerator.is_main_process)


def generate_sharded(generator: Generator, prompts: Sequence[str], accelerator: Any, *, desc: str = "") -> list[str]:
    """Split prompts across processes, generate, and gather back in the input order."""
    from accelerate.utils import gather_object

    indexed = list(enumerate(prompts))
    with accelerator.split_between_processes(indexed) as mine:
        mine = list(mine)
        texts = generator.generate([p for _, p in mine], indices=[i for i, _ in mine], desc=desc)
        local = list(zip([i for i, _ in mine], texts))
    gathered = gather_object(local) if accelerator.num_processes > 1 else local
    by_index = dict(gathered)
    if len(by_index) != len(prompts):
        raise RuntimeError(f"generation gathered {len(by_index)} results for {len(prompts)} prompts")
    return [by_index[i] for i in range(len(prompts))]
