"""Constitution loading, validation errors, hashing and seeded principle draws."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from cai.constitution import load_constitution
from cai.errors import CaiError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "constitutions").glob("*.yaml"))


def test_at_least_two_constitutions_ship():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitutions_validate(path):
    constitution = load_constitution(path)
    assert constitution.critiques and constitution.preferences
    assert len(constitution.content_hash) == 16


def test_default_constitution_covers_the_breadth_of_the_paper():
    constitution = load_constitution(ROOT / "constitutions" / "default.yaml")
    assert len(constitution.critiques) >= 16
    assert len(constitution.preferences) >= 16
    assert len(constitution.few_shot) >= 5


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict:
    return {
        "name": "t",
        "version": "1",
        "critiques": [{"id": "a", "critique_request": "Critique.", "revision_request": "Revise."}],
        "preferences": [{"id": "p", "question": "Which is better?"}],
    }


def test_missing_field_names_file_entry_and_field(tmp_path):
    data = base()
    del data["critiques"][0]["revision_request"]
    path = write(tmp_path, data)
    with pytest.raises(CaiError, match=r"c.yaml: critiques\[0\] \(id 'a'\): missing field 'revision_request'"):
        load_constitution(path)


def test_duplicate_ids(tmp_path):
    data = base()
    data["critiques"].append(dict(data["critiques"][0]))
    with pytest.raises(CaiError, match=r"critiques\[1\] \(id 'a'\): duplicate id 'a' \(first at critiques\[0\]\)"):
        load_constitution(write(tmp_path, data))


def test_empty_text_unknown_key_and_bad_reference_reported_together(tmp_path):
    data = base()
    data["critiques"][0]["critique_request"] = "  "
    data["prefrences"] = []
    data["few_shot"] = [{"id": "d", "prompt": "p", "response": "r", "principle_id": "zzz", "critique": "c", "revision": "v"}]
    with pytest.raises(CaiError) as error:
        load_constitution(write(tmp_path, data))
    message = str(error.value)
    assert "field 'critique_request': must be non-empty text" in message
    assert "unknown key 'prefrences' (did you mean 'preferences'?)" in message
    assert "few_shot[0] (id 'd') field 'principle_id': 'zzz' is not a critique id" in message


def test_no_preferences_is_an_error(tmp_path):
    data = base()
    data["preferences"] = []
    with pytest.raises(CaiError, match="'preferences' must list at least one principle"):
        load_constitution(write(tmp_path, data))


def test_hash_follows_content_not_formatting(tmp_path):
    path = write(tmp_path, base())
    first = load_constitution(path).content_hash
    path.write_text("# a comment\n" + path.read_text())
    assert load_constitution(path).content_hash == first
    data = base()
    data["critiques"][0]["critique_request"] = "Critique harder."
    assert load_constitution(write(tmp_path, data)).content_hash != first


def test_principle_draws_are_seeded():
    constitution = load_constitution(ROOT / "constitutions" / "default.yaml")
    a = [p.id for p in constitution.sample_critiques(random.Random(3), 4)]
    b = [p.id for p in constitution.sample_critiques(random.Random(3), 4)]
    assert a == b
    same = constitution.sample_critiques(random.Random(3), 4, per_round=False)
    assert len({p.id for p in same}) == 1
    ensemble = constitution.sample_preferences(random.Random(0), 3)
    assert len({p.id for p in ensemble}) == 3
