"""Strict typed config loading: overrides, unknown keys, all problems at once, shipped YAMLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai.config import SLRunConfig, check_stages, load_config, parse_override, save_config, split_cli
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


@pytest.mark.parametrize("path", shipped_yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
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
