"""Strict typed config loading: overrides, unknown keys, all problems at once, shipped YAMLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai.config import (
    SLRunConfig,
    check_stages,
    load_config,
    parse_override,
    save_config,
    split_cli,
)
from cai.errors import CaiError

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_are_typed_by_the_dataclass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: runs/a\ngeneration:\n  max_new_tokens: 10\n")
    config = load_config(SLRunConfig, path, ["generation.max_new_tokens=64", "sl.revision_rounds=2", "generation.temperature=0.7", "stages=generate", "lora.enabled=true"])
    assert config.generation.max_new_tokens == 64
    assert config.sl.revision_rounds == 2
    assert config.generation.temperature == pytest.approx(0.7)
    assert config.stages == ["generate"]
    assert config.lora.enabled is True
    assert config.output_dir == "runs/a"


def test_unknown_key_suggests_the_closest_and_all_problems_are_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("generation:\n  max_new_token: 10\nsl:\n  revision_rounds: many\n")
    with pytest.raises(CaiError) as error:
        load_config(SLRunConfig, path)
    message = str(error.value)
    assert str(path) in message
    assert "'generation.max_new_token'" in message and "did you mean 'max_new_tokens'" in message
    assert "sl.revision_rounds: expected an integer" in message


def test_unknown_override_is_an_error():
    with pytest.raises(CaiError, match="unknown key 'sl.revison_rounds'.*revision_rounds"):
        load_config(SLRunConfig, None, ["sl.revison_rounds=2"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: runs/a\ngeneration: [unclosed\n")
    with pytest.raises(CaiError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_config(SLRunConfig, path)


def test_missing_config_file():
    with pytest.raises(CaiError, match="config file not found"):
        load_config(SLRunConfig, "nope/missing.yaml")


def test_parse_override_and_cli_split():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")
    assert split_cli(["--config", "x.yaml", "a=1", "--force"]) == ("x.yaml", ["a=1", "force=true"])
    with pytest.raises(CaiError, match="expected --config PATH or key=value"):
        split_cli(["--confg", "x.yaml"])


def test_stage_selection_is_checked_and_ordered():
    assert check_stages(["sft", "generate"], ["generate", "sft"]) == ["generate", "sft"]
    with pytest.raises(CaiError, match="unknown stage 'sfft'; stages are generate, sft"):
        check_stages(["sfft"], ["generate", "sft"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(SLRunConfig, None, ["sl.revision_rounds=3"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(SLRunConfig, tmp_path / "config.yaml")
    assert again == config


def shipped_yaml_files() -> list[Path]:
    return sorted(p for p in (ROOT / "configs").rglob("*.yaml"))


def with_ppo_mark(path: Path):
    """A shipped config that runs PPO loads only where trl has PPO (the `ppo` extra)."""
    return pytest.param(path, marks=pytest.mark.needs_ppo) if "algorithm: ppo" in path.read_text() else path


@pytest.mark.parametrize("path", [with_ppo_mark(p) for p in shipped_yaml_files()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_opens_with_its_command_and_loads(path):
    text = path.read_text()
    assert text.startswith("#"), "every shipped YAML opens with a comment giving its launch command"
    assert "accelerate launch" in text.split("\n\n")[0] or "python -m cai" in text.split("\n\n")[0]
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    if "accelerate" in path.parts:
        return
    from cai.__main__ import config_classes, detect_kind

    kind = detect_kind(path, data)
    assert kind in config_classes(), f"{path} is not recognised as a stage config"
    config = load_config(config_classes()[kind], path)
    constitution = getattr(config, "constitution", None)  # the prompt-pool config has none
    assert constitution is None or (ROOT / constitution).is_file()


def test_validate_rejects_bad_choices_and_ranges_before_any_stage_runs(tmp_path):
    """`python -m cai validate` stops on an invalid choice and an out-of-range value, all problems in one line."""
    from conftest import run_module
    from helpers import assert_one_line

    bad = tmp_path / "rl.yaml"
    bad.write_text("# accelerate launch cai/rl.py --config rl.yaml\n" + yaml.safe_dump({"output_dir": str(tmp_path / "run"), "feedback": {"ensemble": "median"}, "generation": {"top_p": 0, "batch_size": 0}, "lora": {"dropout": 1.0}}))
    result = run_module("validate", str(bad))
    assert_one_line(
        result,
        "feedback.ensemble: unknown choice 'median'; valid choices: mean, logit_mean",
        "generation.top_p: must be above 0, got 0.0; use a value in (0, 1]",
        "generation.batch_size: must be at least 1, got 0",
        "lora.dropout: must be below 1, got 1.0",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.needs_ppo
def test_every_shipped_config_validates_through_the_cli():
    from conftest import run_module

    paths = [str(p) for p in shipped_yaml_files() if "accelerate" not in p.parts]
    result = run_module("validate", "--explain", *paths)
    assert result.returncode == 0, result.stderr
    assert all(f"{p}: ok" in result.stdout for p in paths)
    assert "feedback.ensemble = 'mean'  (mean|logit_mean)" in result.stdout  # choices printed from the schema
    assert "generation.top_p = 1.0  (float (0, 1])" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sl.revision_rounds=0", "sl.revision_rounds: must be at least 1, got 0"),
        ("generation.max_new_tokens=0", "generation.max_new_tokens: must be at least 1"),
        ("generation.temperature=-1", "generation.temperature: must be at least 0"),
        ("lora.r=0", "lora.r: must be at least 1"),
        ("sft.learning_rate=0", "sft.learning_rate: must be above 0"),
        ("sft.gradient_accumulation_steps=0", "sft.gradient_accumulation_steps: must be at least 1"),
        ("sl.few_shot=-1", "sl.few_shot: must be at least 0"),
        ("stages=generate,sfft", "stages: unknown stage 'sfft'; stages are generate, sft"),
    ],
)
def test_ranges_are_checked_at_load(override, message):
    with pytest.raises(CaiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(SLRunConfig, None, [override])


@pytest.mark.needs_ppo
def test_renamed_stage_and_moved_keys():
    from cai.config import RLRunConfig

    assert load_config(RLRunConfig, None, ["stages=sample,ppo"]).stages == ["sample", "policy"]  # the old stage name still works
    with pytest.raises(CaiError, match="rl.beta: this setting moved to dpo.beta"):
        load_config(RLRunConfig, None, ["rl.beta=0.2"])
    with pytest.raises(CaiError, match="rl.num_generations: this setting moved to grpo.num_generations"):
        load_config(RLRunConfig, None, ["rl.num_generations=2"])
    assert load_config(RLRunConfig, None, ["dpo.beta=0.2", "grpo.num_generations=3"]).grpo.num_generations == 3


def test_cross_field_problems_name_the_setting_once():
    from cai.config import PromptsRunConfig

    with pytest.raises(CaiError) as raised:
        load_config(PromptsRunConfig, None, ["self_instruct.min_words=50", "self_instruct.max_words=10"])
    assert "self_instruct.max_words: 10 is below min_words=50" in str(raised.value)
    assert "self_instruct.self_instruct" not in str(raised.value)
