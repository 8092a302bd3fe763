"""Run directory: atomic shards, manifest, refusing a run made with another constitution."""

from __future__ import annotations

import json

import pytest

from cai.config import SLRunConfig
from cai.errors import CaiError
from cai.run_store import RunStore, chunked


def test_shards_round_trip_in_order_and_are_loadable_by_datasets(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_shard("data", 1, [{"id": "b"}])
    store.write_shard("data", 0, [{"id": "a"}, {"id": "a2"}])
    assert store.done_shards("data") == {0, 1}
    assert [r["id"] for r in store.read_records("data")] == ["a", "a2", "b"]
    assert not list((tmp_path / "run" / "data").glob("*.tmp"))
    import datasets

    loaded = datasets.load_dataset("json", data_files=[str(p) for p in store.shard_files("data")], split="train")
    assert loaded["id"] == ["a", "a2", "b"]


def test_non_main_process_writes_nothing(tmp_path):
    store = RunStore(tmp_path / "run", is_main=False)
    store.write_shard("data", 0, [{"id": "a"}])
    store.mark_stage("x", "done")
    assert not (tmp_path / "run").exists()


def test_stage_status_and_force_sets_outputs_aside(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_shard("data", 0, [{"id": "a"}])
    store.mark_stage("generate", "done", records=1)
    assert store.stage_done("generate")
    moved = store.reset_stage("generate", ["data"])
    assert not store.stage_done("generate")
    assert len(moved) == 1 and moved[0].name.startswith("data.old-")
    assert json.loads((moved[0] / "shard-00000.jsonl").read_text())["id"] == "a"


def test_another_constitution_is_refused(tmp_path):
    store = RunStore(tmp_path / "run")
    store.begin(SLRunConfig(), constitution={"name": "a", "hash": "111"}, models={"policy": "m"}, script="sl")
    store.begin(SLRunConfig(), constitution={"name": "a", "hash": "111"}, models={"policy": "m"}, script="sl")
    with pytest.raises(CaiError, match="holds a run made with constitution 'a' \\(hash 111\\), not 'b'"):
        store.begin(SLRunConfig(), constitution={"name": "b", "hash": "222"}, models={}, script="sl")
    manifest = store.manifest()
    assert manifest["packages"]["torch"] and manifest["models"]["policy"] == "m"
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_require_stage_names_the_missing_stage(tmp_path):
    with pytest.raises(CaiError, match="stage 'generate' has not finished, and 'sft' needs it"):
        RunStore(tmp_path).require_stage("generate", needed_by="sft", records="sl_data")


def test_chunked():
    assert chunked([1, 2, 3], 2) == [[1, 2], [3]]
    with pytest.raises(CaiError):
        chunked([1], 0)


def test_manifest_of_a_run_from_before_the_policy_rename_is_read(tmp_path):
    """Runs made when the policy stage was called `ppo`: its status is read, and carried over on the next mark."""
    import json

    from cai.run_store import RunStore

    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"ppo": {"status": "done", "steps": 4}}}))
    store = RunStore(tmp_path)
    assert store.stage_done("policy") and store.stage_info("policy")["steps"] == 4
    store.mark_stage("policy", "running")
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert "ppo" not in stages and stages["policy"]["status"] == "running" and stages["policy"]["steps"] == 4
