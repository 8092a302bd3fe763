"""What many test modules share: running the stage scripts as users do, the one-line error check, the kill harness."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def accelerate_command(*target: str, processes: int = 1, quiet: bool = False) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` over CPU processes and the environment it needs; `target` is `cai/<script>` args or `-m cai ...`.

    accelerate 1.x starts a single process for `--cpu --num_processes N`; torchrun over CPUs
    needs --multi_gpu with ACCELERATE_USE_CPU set.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", *(["--quiet"] if quiet else []), "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(29500 + os.getpid() % 1000)]
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        command += ["--cpu"]
    return command + list(target), env


def script(name: str) -> str:
    return str(ROOT / "cai" / name)


def run_script(name: str, *args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python cai/<name> ...` offline, capturing output (user-error tests need no accelerate launcher)."""
    return subprocess.run([sys.executable, script(name), *args], cwd=cwd, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=timeout)


PROGRESS_BAR = re.compile(r"\|.*\| *\d+/\d+ \[")


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str, progress_bars: bool = False) -> None:
    """A user mistake: exit code 2, one line on stderr starting `cai: error: `, no traceback, naming each fragment.

    With `progress_bars`, tqdm lines (a run that generated before failing) are not counted as error lines.
    """
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip() and not (progress_bars and PROGRESS_BAR.search(line))]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("cai: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def kill_when(name: str, args: list[str], ready: Path, *, timeout: float = 180, poll: float = 0.02) -> None:
    """Launch `cai/<name>` under accelerate, SIGKILL its process group as soon as `ready` exists (a kill mid-stage)."""
    command, env = accelerate_command(script(name), *args)
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not ready.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(poll)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def write_tiny_gguf(path: Path, *, layers: int = 2, hidden: int = 64, vocabulary: int = 32) -> Path:
    """A llama GGUF with a config's worth of metadata and one tensor (the embedding), small enough
    that transformers' whole-file reader is quick too: something to compare a metadata-only reader with."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(hidden // 4)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocabulary)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", np.zeros((vocabulary, hidden), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
