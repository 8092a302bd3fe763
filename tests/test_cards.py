"""Model and dataset cards in the Hub's format, and what `hub.push` would upload (the upload is mocked; no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from cai import cards
from cai.config import RLRunConfig, SLRunConfig, load_config
from cai.constitution import load_constitution
from cai.errors import CaiError
from cai.run_store import RunStore

CONSTITUTION = ROOT / "constitutions" / "default.yaml"


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, meta, body = text.split("---", 2)
    return yaml.safe_load(meta), body


def make_run(root: Path) -> Path:
    """A run directory as SL + RL + eval leave it (weights replaced by placeholders; cards only read the folders)."""
    constitution = load_constitution(CONSTITUTION)
    store = RunStore(root)
    root.mkdir(parents=True)
    store.update_manifest(
        lambda m: m.update(
            constitution=constitution.manifest_entry(),
            models={"policy": "embedded", "critique_model": "embedded", "sl_model": str(root / "sl_model"), "feedback_model": "embedded"},
            packages={"trl": "1.12.0", "transformers": "5.24.0"},
            stages={},
        )
    )
    store.mark_stage("generate", "done", records=40, red_team=30, helpful=10, revisions=30, revisions_accepted=24, rejected_by_gate={"parroting": 4, "loop": 2})
    store.mark_stage("sft", "done", examples=34, train_loss=1.234567, steps=10, lora=False)
    store.mark_stage("sample", "done", prompts=30, responses=60)
    store.mark_stage("label", "done", comparisons=30, position_bias={"first_preferred_share": 0.61, "votes": 60}, gold={"accuracy": 0.72, "pairs": 100})
    store.mark_stage("reward", "done", train=27, held_out=3, held_out_metrics={"accuracy": 0.6667, "ece": 0.12, "length_correlation": 0.3})
    store.mark_stage("policy", "done", algorithm="ppo", steps=4, reward_before=0.417, reward_after=0.682)
    store.mark_stage("eval", "done", prompts=20, models={"base": {"refusal_rate": 0.1, "over_refusal_rate": 0.0}, "sl": {"refusal_rate": 0.4, "over_refusal_rate": 0.05}, "rl": {"refusal_rate": 0.55, "over_refusal_rate": 0.1}}, skipped=[])
    for folder in ("sl_model", "reward_model", "rl_model"):
        (root / folder).mkdir()
        (root / folder / "config.json").write_text("{}")
        (root / folder / "model.safetensors").write_bytes(b"0")
    store.write_shard("sl_data", 0, [{"id": f"r{i}", "prompt": "p", "revision": "r"} for i in range(5)])
    store.write_shard("preferences", 0, [{"id": f"p{i}", "prompt": [{"role": "user", "content": "p"}], "chosen": [], "rejected": [], "p_chosen": 0.7} for i in range(3)])
    return root


def test_model_cards_carry_hub_metadata_constitution_figures_and_eval(tmp_path):
    from huggingface_hub import ModelCard

    root = make_run(tmp_path / "run")
    written = cards.write_cards(root)
    assert sorted(p.parent.name for p in written) == ["preferences", "reward_model", "rl_model", "sl_data", "sl_model"]
    constitution = load_constitution(CONSTITUTION)

    meta, body = split_card((root / "rl_model" / "README.md").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"cai", "constitutional-ai", "rlaif", "ppo"} <= set(meta["tags"])
    assert f"`{constitution.name}` version {constitution.version}, content hash `{constitution.content_hash}`" in body
    for principle in (*constitution.critiques, *constitution.preferences):
        assert f"- `{principle.id}`: " in body
    assert "| held_out_metrics.accuracy | 0.6667 |" in body and "| reward_after | 0.682 |" in body and "| gold.accuracy | 0.72 |" in body
    assert "| **rl** | 0.1 | 0.55 |" in body  # eval headline, this model in bold
    assert "## Intended use and limitations" in body and "GGUF" in body
    assert ModelCard.load(root / "rl_model" / "README.md").data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"

    meta, body = split_card((root / "reward_model" / "README.md").read_text())
    assert meta["pipeline_tag"] == "text-classification" and "reward-model" in meta["tags"]
    assert "ConstitutionalReward.from_pretrained" in body and "serve-reward" in body
    assert "| **sl**" not in body and "Critique and revision principles" not in body  # preference principles only

    meta, body = split_card((root / "sl_model" / "README.md").read_text())
    assert "sl-cai" in meta["tags"] and "| revisions_accepted | 24 |" in body and "| rejected_by_gate.parroting | 4 |" in body
    assert "| **sl** | 0.05 | 0.4 |" in body and "Preference principles" not in body


def test_dataset_cards_load_by_configs_and_count_rows(tmp_path):
    from huggingface_hub import DatasetCard

    root = make_run(tmp_path / "run")
    cards.write_cards(root)
    meta, body = split_card((root / "preferences" / "README.md").read_text())
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "*.jsonl"}]}]
    assert meta["size_categories"] == ["n<1K"] and "rlaif" in meta["tags"]
    assert "- Rows: 3 " in body and "p_chosen" in body and "| position_bias.first_preferred_share | 0.61 |" in body
    meta, body = split_card((root / "sl_data" / "README.md").read_text())
    assert "sl-cai" in meta["tags"] and "- Rows: 5 " in body and "## Quality report" not in body
    (root / "sl_data_card.md").write_text("# SL-CAI data card\n\n| gate | rejected |\n|---|---|\n| parroting | 4 |\n\n## Accepted examples\n")
    cards.write_cards(root)
    body = split_card((root / "sl_data" / "README.md").read_text())[1]
    assert "## Quality report\n\n| gate | rejected |" in body and "### Accepted examples" in body and "# SL-CAI data card" not in body
    assert DatasetCard.load(root / "sl_data" / "README.md").data.pretty_name.endswith("SL-CAI critique-revision data")
    # the shards still read as before: the card is not a shard
    assert len(RunStore(root).read_records("sl_data")) == 5


def test_a_changed_constitution_is_named_by_hash_only(tmp_path):
    root = make_run(tmp_path / "run")
    edited = tmp_path / "edited.yaml"
    data = yaml.safe_load(CONSTITUTION.read_text())
    data["preferences"][0]["question"] += " (edited)"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    RunStore(root).update_manifest(lambda m: m["constitution"].update(path=str(edited)))
    body = cards.model_card(root, "rl_model")
    assert "has changed or moved since this run" in body


class FakeApi:
    """huggingface_hub.HfApi as `cards.push` uses it, recording instead of uploading."""

    calls: list = []

    def create_repo(self, repo_id, *, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_folder(self, *, repo_id, repo_type, folder_path, commit_message, ignore_patterns):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file() and not p.name.startswith("."))
        readme = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", repo_id, repo_type, files, readme))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return FakeApi.calls


def test_push_creates_each_repo_and_uploads_the_folder_with_its_card(tmp_path, fake_hub):
    root = make_run(tmp_path / "run")
    hub = load_config(RLRunConfig, None, ["hub.push=true", "hub.repo_id=me/cai-demo", "hub.artefacts=[rl_model,preferences]", "hub.repo_ids={preferences: me/prefs}", "stages=eval"]).hub
    pushed = cards.push(root, hub, hub.artefacts)
    assert [c[:5] for c in fake_hub if c[0] == "create_repo"] == [("create_repo", "me/cai-demo-rl-model", "model", True, True), ("create_repo", "me/prefs", "dataset", True, True)]
    uploads = {c[1]: c for c in fake_hub if c[0] == "upload_folder"}
    assert uploads["me/cai-demo-rl-model"][3] == ["README.md", "config.json", "model.safetensors"]
    assert uploads["me/cai-demo-rl-model"][4].split("---", 2)[2].lstrip().startswith("# me/cai-demo-rl-model")
    assert uploads["me/prefs"][2] == "dataset" and "shard-00000.jsonl" in uploads["me/prefs"][3]
    assert pushed["rl_model"]["url"].startswith("https://huggingface.co/me/cai-demo-rl-model")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["hub.push=true"], "hub.repo_id: hub.push=true needs a repo id"),
        (["hub.artefacts=[rl_modle]"], "hub.artefacts: unknown artefact 'rl_modle'"),
        (["hub.repo_id=no-slash"], "hub.repo_id: 'no-slash' is not a Hub repo id"),
        (["hub.push=true", "hub.repo_id=me/x", "hub.artefacts=[]"], "nothing to push"),
    ],
)
def test_hub_settings_are_checked_at_load(overrides, message):
    with pytest.raises(CaiError) as raised:
        load_config(RLRunConfig, None, overrides)
    assert message in str(raised.value) and "hub.hub." not in str(raised.value)


def test_defaults_push_nothing_and_name_each_pipelines_models():
    assert load_config(SLRunConfig, None).hub.artefacts == ["sl_model"] and not load_config(SLRunConfig, None).hub.push
    assert load_config(RLRunConfig, None, ["stages=eval"]).hub.artefacts == ["reward_model", "rl_model"]


@pytest.mark.slow
def test_a_policy_run_leaves_cards_and_pushes_them_through_the_launcher(tiny_model_dir, tmp_path, fake_hub):
    """A real (DPO, one step) policy stage through the launcher: cards written after the stage, pushed at the end."""
    from cai import rl

    root = tmp_path / "run"
    store = RunStore(root)
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "sl_model")
    store.write_shard(
        "preferences",
        0,
        [
            {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": [{"role": "assistant", "content": "A careful answer."}], "rejected": [{"role": "assistant", "content": "Go away."}], "p_chosen": 0.8}
            for i in range(4)
        ],
    )
    store.mark_stage("label", "done", comparisons=4)
    args = [
        f"output_dir={root}",
        f"constitution={ROOT / 'tests' / 'data' / 'constitution.yaml'}",
        f"prompts.red_team={ROOT / 'tests' / 'data' / 'red_team.jsonl'}",
        "stages=policy",
        "rl.algorithm=dpo",
        "training.max_steps=1",
        "training.per_device_train_batch_size=2",
        "training.max_length=128",
        "generation.max_new_tokens=4",
        "hub.push=true",
        "hub.repo_id=me/tiny",
        "hub.artefacts=[rl_model,preferences]",
    ]
    assert rl.main(args) == 0
    meta, body = split_card((root / "rl_model" / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "dpo" in meta["tags"]
    assert body.lstrip().startswith("# me/tiny-rl-model") and "**policy** (done" in body and "| algorithm | dpo |" in body
    uploads = {c[1]: c for c in fake_hub if c[0] == "upload_folder"}
    assert set(uploads) == {"me/tiny-rl-model", "me/tiny-preferences"}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(uploads["me/tiny-rl-model"][3])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["hub"]["rl_model"]["repo_id"] == "me/tiny-rl-model" and manifest["hub"]["preferences"]["repo_type"] == "dataset"


def test_push_command_dry_run_lists_the_upload_and_errors_are_one_line(tmp_path, fake_hub, capsys):
    from cai.__main__ import main

    root = make_run(tmp_path / "run")
    assert main(["push", str(root), "--repo_id", "me/demo", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"[hub] would push {root / 'rl_model'} -> me/demo-rl-model (model, private): README.md, config.json, model.safetensors" in out
    assert "me/demo-sl-model" in out and "me/demo-reward-model" in out and "preferences" not in out
    assert fake_hub == []  # nothing uploaded
    assert split_card((root / "rl_model" / "README.md").read_text())[1].lstrip().startswith("# me/demo-rl-model")
    assert main(["push", str(root), "--repo_id", "me/demo", "--artefacts", "preferences", "--public"]) == 0
    assert [c[:4] for c in fake_hub if c[0] == "create_repo"] == [("create_repo", "me/demo-preferences", "dataset", False)]
    assert json.loads((root / "manifest.json").read_text())["hub"]["preferences"]["repo_id"] == "me/demo-preferences"
    assert main(["push", str(root), "--repo_id", "nope"]) == 2
    assert "cai: error: --repo_id: 'nope' is not a Hub repo id" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "--repo_id", "me/x"]) == 2


def test_cards_never_change_what_a_resume_fingerprints(tmp_path):
    """The policy stage's resume check stamps the model folders' files; the card is not one of them, and an unchanged card is not rewritten."""
    from cai.fingerprint import files_stamp

    root = make_run(tmp_path / "run")
    before = files_stamp(root / "sl_model")
    cards.write_cards(root)
    card = root / "sl_model" / "README.md"
    stamp = card.stat().st_mtime_ns
    cards.write_cards(root)
    assert card.stat().st_mtime_ns == stamp
    cards.write_cards(root, repo_ids={"sl_model": "me/other"})
    assert "# me/other" in card.read_text() and files_stamp(root / "sl_model") == before


def test_labels_at_chance_are_said_in_words(tmp_path):
    root = make_run(tmp_path / "run")
    assert "**Warning:**" not in cards.model_card(root, "rl_model")
    RunStore(root).mark_stage("label", "done", gold={"accuracy": 0.51, "ci95": [0.4134, 0.6057], "count": 100, "at_chance": True})
    for text in (cards.model_card(root, "rl_model"), cards.model_card(root, "reward_model"), cards.dataset_card(root, "preferences")):
        assert "> **Warning:** the feedback model agreed with the gold preference set 51% (95% CI 41%-61%) on 100 pairs, which is chance" in text
        assert "| gold.ci95 | 0.4134, 0.6057 |" in text
    assert "**Warning:**" not in cards.model_card(root, "sl_model")
    RunStore(root).mark_stage("reward", "done", gold={"accuracy": 0.58, "ci95": [0.48, 0.67], "count": 100, "at_chance": True})
    text = cards.model_card(root, "reward_model")
    assert "> **Warning:** the reward model agreed with the gold preference set 58% (95% CI 48%-67%) on 100 pairs, which is chance" in text
    assert text.count("> **Warning:**") == 2 and "**Warning:** the reward model" not in cards.dataset_card(root, "preferences")
