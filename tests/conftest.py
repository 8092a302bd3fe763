"""Shared fixtures: a tiny Llama built locally from a config (offline), and small prompt sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import accelerate_command

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def pytest_collection_modifyitems(config, items):
    from cai.policy.availability import ppo_missing_reason

    missing = ppo_missing_reason()  # a current trl (>= 1.13): PPO's tests skip, everything else runs
    if missing:
        skip_ppo = pytest.mark.skip(reason=f"needs trl's PPO: {missing}; pip install 'cai[ppo]'")
        for item in items:
            if item.get_closest_marker("needs_ppo"):
                item.add_marker(skip_ppo)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def cpu_without_bf16():
    """In-process tests compute in fp32 on every CPU (precision=auto finds no bf16 instructions), so their
    numbers do not depend on the machine; session-wide, since session fixtures load models too. Tests of
    bf16 patch the capability back in; launched subprocesses see the real CPU unless given precision=fp32."""
    import torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cpu, "get_capabilities", lambda: {}, raising=False)
        yield


@pytest.fixture(autouse=True)
def precision_auto():
    """Each test starts from the default precision setting (a launch in-process sets it from its config)."""
    from cai import models

    models.use_precision("auto")
    yield
    models.use_precision("auto")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer, read straight from the GGUF (no weight conversion)."""
    from transformers import AutoTokenizer

    from cai import models

    gguf = models.embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    models.configure_padding(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A 2-layer Llama (hidden 64) with the embedded tokenizer, saved like any local checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = embedded_tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,  # tied at this size, greedy decoding only ever emits newlines
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="module")
def accelerator():
    """One CPU process, as the judges and labelers run under `accelerate launch --cpu`."""
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def constitution():
    """The test constitution (tests/data/constitution.yaml)."""
    from cai.constitution import load_constitution

    return load_constitution(DATA / "constitution.yaml")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def launch(script: str, *args: str, processes: int = 1, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run a stage script the way users do: `accelerate launch --cpu ... cai/<script>`."""
    command, launch_env = accelerate_command(str(ROOT / "cai" / script), *args, processes=processes)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **launch_env, **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_module(*args: str, cwd: Path = ROOT, timeout: int = 300):
    """`python -m cai ...` as a user would type it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cai", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
