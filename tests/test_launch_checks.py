"""What a launch checks before it writes a run directory or loads a model, and the run store's
housekeeping (issue 11): each bad input is one `cai: error:` line with exit code 2."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import DATA
from helpers import assert_one_line, run_script, write_tiny_gguf

from cai.run_store import RunStore, atomic_write_text

BINARY = b"\xff\xfe\x00\x81 not text \x9c\n"


def sl_args(run: Path, model: Path | str, *extra: str) -> list[str]:
    return [
        f"output_dir={run}",
        f"model={model}",
        f"constitution={DATA / 'constitution.yaml'}",
        f"prompts.red_team={DATA / 'red_team.jsonl'}",
        f"prompts.helpful={DATA / 'helpful.jsonl'}",
        "stages=generate",
        "generation.max_new_tokens=4",
        *extra,
    ]


# ---------------------------------------------------------------- before the run directory is made


def test_output_dir_under_a_regular_file(tmp_path, tiny_model_dir):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_script("sl.py", *sl_args(blocker / "run", tiny_model_dir))
    assert_one_line(result, f"output_dir: {blocker / 'run'} cannot be made", "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_dir_in_a_read_only_directory(tmp_path, tiny_model_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line(run_script("sl.py", *sl_args(locked / "run", tiny_model_dir)), "is not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("setting", ["prompts.red_team", "prompts.helpful"])
def test_binary_prompt_file(tmp_path, tiny_model_dir, setting):
    binary = tmp_path / "prompts.jsonl"
    binary.write_bytes(BINARY)
    result = run_script("sl.py", *sl_args(tmp_path / "run", tiny_model_dir, f"{setting}={binary}"))
    assert_one_line(result, f"{setting}: {binary} is not UTF-8 text", "save it as UTF-8")
    assert not (tmp_path / "run").exists()


def test_binary_seed_file(tmp_path, tiny_model_dir):
    binary = tmp_path / "seeds.jsonl"
    binary.write_bytes(BINARY)
    result = run_script("grow.py", f"output_dir={tmp_path / 'run'}", f"model={tiny_model_dir}", f"self_instruct.seed_red_team={binary}")
    assert_one_line(result, f"self_instruct.seed_red_team: {binary} is not UTF-8 text")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["missing model", "missing prompts"])
def test_bad_model_or_prompts_leave_no_run_directory(tmp_path, tiny_model_dir, problem):
    model = tmp_path / "no-model" if problem == "missing model" else tiny_model_dir
    extra = [f"prompts.red_team={tmp_path / 'none.jsonl'}"] if problem == "missing prompts" else []
    result = run_script("sl.py", *sl_args(tmp_path / "run", model, *extra))
    assert_one_line(result, "not found")
    assert not (tmp_path / "run").exists()  # neither folder nor manifest before the inputs are checked


def test_unknown_lora_target_modules(tmp_path, tiny_model_dir):
    result = run_script("sl.py", *sl_args(tmp_path / "run", tiny_model_dir, "stages=sft", "lora.enabled=true", "lora.target_modules=[q_proj,qkv_proj]"))
    assert_one_line(result, "lora.target_modules: 'qkv_proj' not in", "q_proj", "v_proj", "'all-linear'")
    assert not (tmp_path / "run").exists()


def test_known_lora_target_modules_pass(tiny_model_dir):
    from cai.preflight import check_lora_targets

    check_lora_targets(str(tiny_model_dir), ["q_proj", "self_attn.v_proj", "down_proj"])
    check_lora_targets(str(tiny_model_dir), "all-linear")


def adapter_on(directory: Path, base: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    return directory


def assert_unknown_target(reference: str) -> None:
    from cai.errors import CaiError
    from cai.preflight import check_lora_targets

    with pytest.raises(CaiError) as caught:
        check_lora_targets(reference, ["q_proj", "qkv_proj"])
    message = str(caught.value)
    assert message.startswith(f"lora.target_modules: 'qkv_proj' not in {reference} (its weight layers: "), message
    assert "q_proj" in message and "down_proj" in message and message.endswith("; use some of those or 'all-linear'")
    check_lora_targets(reference, ["q_proj", "self_attn.v_proj", "down_proj"])


def test_lora_targets_of_the_embedded_model_before_its_conversion(tmp_path, monkeypatch):
    """No converted checkpoint yet (an empty cache): the targets are checked on the GGUF's metadata."""
    from cai import models

    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    assert not (models.embedded_checkpoint_dir() / "config.json").exists()
    assert_unknown_target(models.EMBEDDED)
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing written


def test_lora_targets_of_a_gguf_file(tmp_path):
    assert_unknown_target(str(write_tiny_gguf(tmp_path / "tiny.gguf")))


def test_lora_targets_of_an_adapter_are_its_base_models(tmp_path, tiny_model_dir):
    assert_unknown_target(str(adapter_on(tmp_path / "adapter", str(tiny_model_dir))))
    gguf_base = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert_unknown_target(str(adapter_on(tmp_path / "on-adapter", str(adapter_on(tmp_path / "on-gguf", str(gguf_base))))))  # resolved recursively


@pytest.mark.parametrize("reference", ["run/sl_model", "adapter-on-missing-base", "adapter-on-itself", "missing.gguf"])
def test_lora_targets_of_a_model_not_made_yet_are_not_checked(tmp_path, reference):
    from cai.preflight import check_lora_targets

    if reference == "adapter-on-missing-base":
        adapter_on(tmp_path / reference, str(tmp_path / "run" / "sl_model"))
    elif reference == "adapter-on-itself":
        adapter_on(tmp_path / reference, str(tmp_path / reference))
    check_lora_targets(str(tmp_path / reference), ["qkv_proj"])


def test_gguf_config_matches_transformers_whole_file_reader(tmp_path):
    """`models.gguf_config` reads metadata only; it must build the config transformers' loader would."""
    from transformers import AutoConfig

    from cai import models

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", layers=3, hidden=48, vocabulary=40)
    ours, theirs = models.gguf_config(gguf).to_dict(), AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    ours.pop("_name_or_path")
    theirs.pop("_name_or_path")
    assert ours == theirs
    assert (ours["model_type"], ours["num_hidden_layers"], ours["hidden_size"], ours["vocab_size"], ours["tie_word_embeddings"]) == ("llama", 3, 48, 40, True)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["training.max_length=16", "ppo.response_length=16"], "training.max_length: 16 tokens cannot hold a rollout of up to ppo.response_length=16"),
        (["rl.algorithm=grpo", "training.max_length=8", "grpo.response_length=32"], "grpo.response_length=32"),
        (["stages=reward", "reward.training.max_length=32", "generation.max_new_tokens=64"], "reward.training.max_length: 32 tokens cannot hold a sampled response"),
    ],
)
def test_max_length_too_short_for_a_response(tmp_path, overrides, fragment):
    result = run_script("rl.py", f"output_dir={tmp_path / 'run'}", "stages=policy", *overrides)
    assert_one_line(result, fragment)
    assert not (tmp_path / "run").exists()


def test_max_length_too_short_for_every_dpo_prompt(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    store = RunStore(run)
    rows = [
        {
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": f"Question {i}: how do I get into my neighbour's house?"}],
            "chosen": [{"role": "assistant", "content": "I can't help with that."}],
            "rejected": [{"role": "assistant", "content": "Break the back window."}],
            "p_chosen": 0.8,
        }
        for i in range(4)
    ]
    store.write_shard("preferences", 0, rows)
    store.mark_stage("label", "done")
    args = [f"output_dir={run}", f"model={tiny_model_dir}", f"constitution={DATA / 'constitution.yaml'}", f"prompts.red_team={DATA / 'red_team.jsonl'}"]
    result = run_script("rl.py", *args, "stages=policy", "rl.algorithm=dpo", "training.max_length=8")
    assert_one_line(result, "training.max_length: every DPO pair's prompt fills training.max_length=8 tokens")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("[1, 2]", "not a cai manifest (a JSON list"), ('{"stages": ', "corrupt manifest (not JSON)"), ('{"stages": ["generate"]}', "not a cai manifest"), (BINARY, "corrupt manifest")],
)
def test_manifest_of_the_wrong_shape(tmp_path, tiny_model_dir, content, fragment):
    run = tmp_path / "run"
    run.mkdir()
    manifest = run / "manifest.json"
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line(run_script("sl.py", *sl_args(run, tiny_model_dir)), f"{manifest}: {fragment}", "use a new output_dir")
    with pytest.raises(Exception, match="restore it"):
        RunStore(run).stage_info("generate")


# ---------------------------------------------------------------- run store housekeeping


def test_force_leaves_no_old_counts_in_the_manifest(tmp_path):
    store = RunStore(tmp_path)
    store.mark_stage("generate", "done", records=12, accepted=9, inputs="abc")
    (tmp_path / "sl_data").mkdir()
    store.reset_stage("generate", ["sl_data"])
    entry = store.stage_info("generate")
    assert entry["status"] == "pending" and set(entry) == {"status", "at"}
    assert [p.name.startswith("sl_data.old-") for p in tmp_path.iterdir() if p.is_dir()] == [True]


def test_stale_temporary_files_are_removed_when_the_stage_starts(tmp_path):
    store = RunStore(tmp_path)
    store.write_shard("sl_data", 0, [{"id": "a"}])
    stale = tmp_path / "sl_data" / ".shard-00001.jsonl.k2j3.tmp"  # what a kill inside atomic_write_text leaves
    stale.write_text('{"id": "b"')
    other = tmp_path / "pairs" / ".shard-00000.jsonl.x.tmp"  # another stage's: not touched
    other.parent.mkdir()
    other.write_text("")
    assert store.remove_partial_writes(["sl_data", "sl_model"]) == [stale]
    assert not stale.exists() and other.exists() and store.done_shards("sl_data") == {0}


def test_run_stages_cleans_partial_writes_before_the_stage(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from cai import cards, launch, stages
    from cai.config import SLRunConfig, load_config

    seen = []
    generate, *rest = stages.PIPELINES["sl"]
    record = dataclasses.replace(generate, run=lambda *a: seen.append(sorted(p.name for p in (tmp_path / "sl_data").iterdir())))
    monkeypatch.setitem(stages.PIPELINES, "sl", (record, *rest))
    monkeypatch.setattr(cards, "after_stage", lambda *a: None)
    monkeypatch.setattr(cards, "after_launch", lambda *a: None)
    (tmp_path / "sl_data").mkdir()
    (tmp_path / "sl_data" / ".shard-00000.jsonl.abc.tmp").write_text("{")
    config = load_config(SLRunConfig, None, [f"output_dir={tmp_path}", "stages=generate"])
    launch.run_stages(config, RunStore(tmp_path), Accelerator(cpu=True), "sl", tag="sl")
    assert seen == [[]]


def test_shards_and_manifest_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        store = RunStore(tmp_path)
        store.write_shard("pairs", 0, [{"id": "a"}])
        store.mark_stage("sample", "done")
        atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    for path in (store.shard_path("pairs", 0), store.manifest_path, tmp_path / "x.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_binary_eval_prompt_file_and_unread_files_are_not_checked(tmp_path):
    binary = tmp_path / "eval.jsonl"
    binary.write_bytes(BINARY)
    result = run_script("rl.py", f"output_dir={tmp_path / 'run'}", "stages=eval", f"eval.helpful={binary}")
    assert_one_line(result, f"eval.helpful: {binary} is not UTF-8 text")
    assert not (tmp_path / "run").exists()

    from cai.config import SLRunConfig, load_config
    from cai.preflight import check_before_run

    config = load_config(SLRunConfig, None, [f"output_dir={tmp_path / 'sl'}", f"prompts.red_team={binary}", "stages=sft"])
    check_before_run(config)  # sft reads no prompt file
