"""Each user mistake ends in one line on stderr and exit code 2, with no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA, ROOT
from helpers import accelerate_command, assert_one_line, run_script


def base_args(tmp_path: Path, model: Path | str) -> list[str]:
    return [
        f"output_dir={tmp_path / 'run'}",
        f"model={model}",
        f"constitution={DATA / 'constitution.yaml'}",
        f"prompts.red_team={DATA / 'red_team.jsonl'}",
        f"prompts.helpful={DATA / 'helpful.jsonl'}",
        "stages=generate",
        "generation.max_new_tokens=4",
    ]


def test_malformed_yaml(tmp_path):
    config = tmp_path / "sl.yaml"
    config.write_text("output_dir: runs/x\nsl: {revision_rounds: 2\n")
    assert_one_line(run_script("sl.py", "--config", str(config)), str(config), "malformed YAML")


def test_unknown_config_key(tmp_path):
    assert_one_line(run_script("sl.py", "sl.revison_rounds=2"), "unknown key 'sl.revison_rounds'", "did you mean 'revision_rounds'")


def test_constitution_missing_field(tmp_path, tiny_model_dir):
    data = yaml.safe_load((DATA / "constitution.yaml").read_text())
    del data["critiques"][1]["revision_request"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), f"constitution={path}"), str(path), "critiques[1] (id 'honesty'): missing field 'revision_request'")


def test_duplicate_principle_ids(tmp_path, tiny_model_dir):
    data = yaml.safe_load((DATA / "constitution.yaml").read_text())
    data["preferences"][1]["id"] = data["preferences"][0]["id"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), f"constitution={path}"), "duplicate id 'less-harmful'")


def test_missing_prompt_file(tmp_path, tiny_model_dir):
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), "prompts.red_team=nowhere/prompts.jsonl"), "prompts.red_team", "nowhere/prompts.jsonl not found")


def test_empty_prompt_set(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), f"prompts.red_team={empty}"), "holds no prompts")


def test_unknown_model_reference(tmp_path):
    assert_one_line(run_script("sl.py", *base_args(tmp_path, "./no/such/model")), "model: ./no/such/model not found")


def test_unknown_hub_model_offline(tmp_path):
    assert_one_line(run_script("sl.py", *base_args(tmp_path, "nobody/no-such-model")), "model nobody/no-such-model: cannot load")


def test_output_dir_made_with_another_constitution(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"constitution": {"name": "other", "hash": "abc"}, "stages": {}}))
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir)), "holds a run made with constitution 'other'", "use a new output_dir")


def test_accelerate_launch_shows_our_line(tmp_path):
    """Under `accelerate launch` the launcher adds its own report; our line is still first and exact."""
    command, env = accelerate_command(str(ROOT / "cai" / "sl.py"), "sl.revison_rounds=2", quiet=True)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "cai: error: override sl.revison_rounds=2: unknown key 'sl.revison_rounds'" in result.stderr
    assert "Traceback" not in result.stderr


def test_vllm_backend_without_vllm_installed(tmp_path, tiny_model_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), "generation.backend=vllm"), "generation.backend: 'vllm' is selected but vllm is not installed")


def test_unknown_generation_backend(tmp_path, tiny_model_dir):
    assert_one_line(run_script("sl.py", *base_args(tmp_path, tiny_model_dir), "generation.backend=tgi"), "generation.backend: unknown choice 'tgi'; valid choices: transformers, vllm")


def test_validate_command_reports_ok_and_errors(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "cai", "validate", "constitutions/default.yaml", "configs/demo/sl.yaml"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "constitutions/default.yaml: ok — constitution 'default'" in ok.stdout
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\nversion: 1\ncritiques: []\n")
    result = subprocess.run([sys.executable, "-m", "cai", "validate", str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line(result, "missing required key 'preferences'", "'critiques' must list at least one principle")


def test_override_typo_is_blamed_on_the_override_not_the_file(tmp_path):
    config = tmp_path / "sl.yaml"
    config.write_text("output_dir: runs/x\n")
    result = run_script("sl.py", "--config", str(config), "sl.revison_rounds=2")
    assert_one_line(result, "override sl.revison_rounds=2: unknown key 'sl.revison_rounds'", "did you mean 'revision_rounds'")
    assert str(config) not in result.stderr


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    config = tmp_path / "sl.yaml"
    config.write_text("sl:\n  few_shot: 1\n  few_shot: 2\n")
    assert_one_line(run_script("sl.py", "--config", str(config)), f"{config}:3", "duplicate key 'few_shot'")


@pytest.mark.parametrize("what", ["config", "constitution"])
def test_binary_files_are_one_line(tmp_path, what):
    binary = tmp_path / "x.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    args = ["--config", str(binary)] if what == "config" else [f"constitution={binary}", "stages=generate"]
    assert_one_line(run_script("sl.py", *args), str(binary), "not UTF-8 text")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("generation.top_p=5", "generation.top_p: must be at most 1"),
        ("generation.temperature=-1", "generation.temperature: must be at least 0"),
        ("sl.few_shot=-1", "sl.few_shot: must be at least 0"),
        ("generation.batch_size=0", "generation.batch_size: must be at least 1"),
        ("sl.revision_mode=rewrite", "sl.revision_mode"),
        ("sl.gates.parrot_rouge=2", "sl.gates.parrot_rouge: must be at most 1"),
    ],
)
def test_out_of_range_settings_stop_before_any_work(tmp_path, override, fragment):
    result = run_script("sl.py", f"output_dir={tmp_path / 'run'}", override)
    assert_one_line(result, f"override {override}", fragment)
    assert not (tmp_path / "run").exists()


def test_model_typo_suggests_embedded(tmp_path):
    result = run_script("sl.py", f"output_dir={tmp_path / 'run'}", "model=embeded")
    assert_one_line(result, "model: 'embeded' not found", "did you mean 'embedded'?")
    assert not (tmp_path / "run").exists()


def test_numbers_where_principle_text_belongs(tmp_path):
    data = yaml.safe_load((DATA / "constitution.yaml").read_text())
    data["critiques"][0]["revision_request"] = 42
    path = tmp_path / "numbers.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_one_line(run_script("sl.py", f"constitution={path}", "stages=generate"), str(path), "field 'revision_request': must be non-empty text, got 42")
