"""cai beside a current trl: PPO (trl<1.13, the `ppo` extra) refused in one line at config load; the rest unaffected.

The missing PPO is simulated two ways: in process, a None entry in sys.modules (what makes
`import trl.experimental.ppo` fail); through the CLI, a trl 1.16-shaped package (no
`experimental/ppo`, version 1.16.0 in its metadata) first on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import OFFLINE, ROOT, assert_one_line

from cai.config import RLRunConfig, load_config
from cai.errors import CaiError
from cai.policy import availability

DEMO_RL = str(ROOT / "configs" / "demo" / "rl.yaml")


@pytest.fixture
def no_ppo(monkeypatch):
    """This process's trl behaves like trl >= 1.13: `import trl.experimental.ppo` raises ImportError."""
    monkeypatch.setitem(sys.modules, availability.PPO_MODULE, None)


def test_installed_trl_has_ppo_and_the_pin_lives_in_the_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    trl_pins = [d for d in project["dependencies"] if d.startswith("trl")]
    assert trl_pins == ["trl>=1.10"]
    assert project["optional-dependencies"]["ppo"] == [availability.PPO_REQUIREMENT]
    assert '-e ".[ppo' in (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")  # the demo and the tests both get the ppo extra
    from packaging.version import Version

    if Version(availability.trl_version()) < Version("1.13"):
        assert availability.ppo_missing_reason() is None
        assert availability.import_ppo().PPOTrainer.__name__ == "PPOTrainer"


def test_missing_ppo_is_one_config_problem_naming_both_fixes(no_ppo):
    with pytest.raises(CaiError) as raised:
        load_config(RLRunConfig, DEMO_RL)
    message = str(raised.value)
    assert message.startswith(f"{DEMO_RL}: rl.algorithm: ppo runs trl's PPOTrainer")
    assert "pip install 'cai[ppo]'" in message and "rl.algorithm=dpo, grpo or rloo" in message
    assert "\n" not in message


@pytest.mark.parametrize("overrides", [["rl.algorithm=grpo"], ["rl.algorithm=dpo"], ["rl.algorithm=rloo"], ["stages=sample,label,reward,eval"], ["stages=label"]])
def test_without_ppo_every_other_choice_still_loads(no_ppo, overrides):
    config = load_config(RLRunConfig, DEMO_RL, overrides)
    assert config.rl.algorithm != "ppo" or "policy" not in config.stages


def test_old_stage_name_still_counts_as_the_policy_stage(no_ppo):
    with pytest.raises(CaiError, match="cai\\[ppo\\]"):
        load_config(RLRunConfig, DEMO_RL, ["stages=ppo"])


def test_policy_stage_stops_before_loading_anything(no_ppo):
    """A config built in code skips the load check; the stage repeats it before touching the run or a model."""
    from cai.policy.stage import run_policy

    with pytest.raises(CaiError, match="choose rl.algorithm=dpo, grpo or rloo"):
        run_policy(RLRunConfig(), store=None, accelerator=None)


def test_import_ppo_turns_the_import_failure_into_the_one_line(no_ppo):
    with pytest.raises(CaiError) as raised:
        availability.import_ppo()
    assert "importing it failed" in str(raised.value) and "cai[ppo]" in str(raised.value)


def fake_current_trl(root: Path) -> Path:
    """A trl 1.16-shaped package: `trl.experimental` without `ppo`, and 1.16.0 in its metadata."""
    (root / "trl" / "experimental").mkdir(parents=True)
    (root / "trl" / "__init__.py").write_text('__version__ = "1.16.0"\n')
    (root / "trl" / "experimental" / "__init__.py").write_text("")
    info = root / "trl-1.16.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trl\nVersion: 1.16.0\n")
    return root


def run_with_trl(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_without_ppo_validate_and_launch_stop_with_one_line(tmp_path):
    trl = fake_current_trl(tmp_path / "site")
    result = run_with_trl(trl, "-m", "cai", "validate", "configs/demo/rl.yaml")
    assert_one_line(result, "configs/demo/rl.yaml: rl.algorithm: ppo", "trl 1.16.0 is installed and has no trl.experimental.ppo", "pip install 'cai[ppo]'", "rl.algorithm=dpo, grpo or rloo")
    # the launcher stops at config load: no run directory is made, no model is read
    run_dir = tmp_path / "run"
    result = run_with_trl(trl, "cai/rl.py", "--config", "configs/demo/rl.yaml", f"output_dir={run_dir}")
    assert_one_line(result, "cai[ppo]")
    assert not run_dir.exists()
    assert run_with_trl(trl, "-m", "cai", "validate", "configs/demo/rl.yaml", "--kind", "rl").returncode == 2
    ok = run_with_trl(trl, "cai/rl.py", "--help")
    assert ok.returncode == 0
