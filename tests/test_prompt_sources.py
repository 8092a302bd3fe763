"""Prompt sets from JSONL, CSV, Parquet and (offline) hub names, with clear errors."""

from __future__ import annotations

import json

import pytest

from cai.errors import CaiError
from cai.prompt_sources import load_prompts


def test_jsonl_with_ids_and_categories(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"x{i}", "prompt": f"q{i}", "category": "c"}) for i in range(5)) + "\n")
    prompts = load_prompts(str(path), kind="red_team", shuffle=False)
    assert [p.id for p in prompts] == ["x0", "x1", "x2", "x3", "x4"]
    assert prompts[0].category == "c" and prompts[0].kind == "red_team"
    sample = load_prompts(str(path), kind="red_team", limit=3, seed=1)
    assert len(sample) == 3 and sample == load_prompts(str(path), kind="red_team", limit=3, seed=1)


def test_csv_and_parquet_with_a_custom_column(tmp_path):
    import datasets

    rows = [{"question": "a?"}, {"question": "b?"}]
    csv = tmp_path / "p.csv"
    csv.write_text("question\na?\nb?\n")
    parquet = tmp_path / "p.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (csv, parquet):
        prompts = load_prompts(str(path), kind="helpful", column="question", shuffle=False)
        assert [p.prompt for p in prompts] == ["a?", "b?"]
        assert prompts[0].id == "helpful-00000"


def test_missing_file_empty_set_and_missing_column(tmp_path):
    with pytest.raises(CaiError, match="prompt file .*missing.jsonl not found"):
        load_prompts(str(tmp_path / "missing.jsonl"), kind="red_team")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CaiError, match="holds no prompts"):
        load_prompts(str(empty), kind="red_team")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(CaiError, match="has no column 'prompt' \\(columns: text\\)"):
        load_prompts(str(other), kind="red_team")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(CaiError, match="broken.jsonl:2: invalid JSON"):
        load_prompts(str(broken), kind="red_team")


def test_hub_dataset_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CaiError, match="cannot load 'someone/red-team-prompts'"):
        load_prompts("someone/red-team-prompts", kind="red_team")
