"""The constitution: the only human oversight in Constitutional AI.

A YAML file of critique/revision pairs (SL-CAI), preference questions (RLAIF) and a few
demonstrations. Validated strictly on load; its content hash goes into every manifest so a
run always says which principles made it. As in the paper, a principle is drawn at random
for each critique round and each comparison; the draw is seeded so runs are reproducible.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.config import closest, read_yaml_mapping
from cai.errors import CaiError
from cai.fingerprint import fingerprint

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class CritiquePrinciple:
    """A critique request and its paired revision request.

    `categories` are the prompt harm categories the principle speaks to (for
    `sl.principle_selection: category`); `revision_opening` is text the revised answer
    starts with in `sl.revision_mode: context_distillation` (small models rarely decline on
    their own; the model writes the rest).
    """

    id: str
    critique_request: str
    revision_request: str
    categories: tuple[str, ...] = ()
    revision_opening: str = ""


@dataclass(frozen=True)
class PreferencePrinciple:
    id: str
    question: str


@dataclass(frozen=True)
class Demonstration:
    """One worked critique-revision chain shown to the model as a few-shot example."""

    id: str
    prompt: str
    response: str
    principle_id: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    name: str
    version: str
    description: str
    critiques: tuple[CritiquePrinciple, ...]
    preferences: tuple[PreferencePrinciple, ...]
    few_shot: tuple[Demonstration, ...] = ()
    path: str = ""
    content_hash: str = ""
    _by_id: dict[str, CritiquePrinciple] = field(default_factory=dict, compare=False, repr=False)

    categories: tuple[str, ...] = ()

    def critique(self, principle_id: str) -> CritiquePrinciple:
        return self._by_id[principle_id]

    def critiques_for(self, category: str | None) -> list[CritiquePrinciple]:
        """The critique principles that declare `category`; empty when none does (or no category)."""
        if not category:
            return []
        return [c for c in self.critiques if category in c.categories]

    def sample_critiques(self, rng: random.Random, count: int, *, per_round: bool = True) -> list[CritiquePrinciple]:
        """One principle per round (the paper re-draws each round), or one reused for all rounds."""
        if per_round:
            return [rng.choice(self.critiques) for _ in range(count)]
        return [rng.choice(self.critiques)] * count

    def sample_preferences(self, rng: random.Random, count: int) -> list[PreferencePrinciple]:
        """Distinct principles for an ensemble when the constitution has enough, else with repeats."""
        if count <= len(self.preferences):
            return rng.sample(list(self.preferences), count)
        return [rng.choice(self.preferences) for _ in range(count)]

    def manifest_entry(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "path": self.path, "hash": self.content_hash}


TOP_LEVEL = {"name": True, "version": True, "description": False, "categories": False, "critiques": True, "preferences": True, "few_shot": False}
ENTRY_FIELDS = {
    "critiques": ("id", "critique_request", "revision_request"),
    "preferences": ("id", "question"),
    "few_shot": ("id", "prompt", "response", "principle_id", "critique", "revision"),
}
# optional entry fields: name -> "text" or "categories" (a list of declared category names)
OPTIONAL_FIELDS = {"critiques": {"categories": "categories", "revision_opening": "text"}}


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate; every problem is reported at once, each naming the entry and field."""
    path = Path(path)
    data = read_yaml_mapping(path, what="constitution")
    problems: list[str] = []
    for key in data:
        if key not in TOP_LEVEL:
            problems.append(f"unknown key {key!r} ({closest(str(key), list(TOP_LEVEL))})")
    for key, required in TOP_LEVEL.items():
        if required and key not in data:
            problems.append(f"missing required key {key!r}")
    for key in ("name", "version", "description"):
        if key in data and not _text(data[key]):
            problems.append(f"{key!r} must be non-empty text")
    declared = _declared_categories(data, problems)
    sections = {name: _entries(data, name, problems, declared) for name in ENTRY_FIELDS}
    for name in ("critiques", "preferences"):
        if name in data and not data[name]:  # invalid entries are reported on their own
            problems.append(f"{name!r} must list at least one principle")
    critique_ids = {entry.get("id") for entry in sections["critiques"]}
    for index, demo in enumerate(sections["few_shot"]):
        ref = demo.get("principle_id")
        if _text(ref) and ref not in critique_ids:
            problems.append(f"few_shot[{index}] (id {demo.get('id')!r}) field 'principle_id': {ref!r} is not a critique id ({closest(str(ref), sorted(i for i in critique_ids if isinstance(i, str)))})")
    if problems:
        raise CaiError(f"{path}: " + "; ".join(problems))

    critiques = tuple(
        CritiquePrinciple(
            **{k: str(e[k]).strip() for k in ENTRY_FIELDS["critiques"]},
            categories=tuple(str(c) for c in e.get("categories") or ()),
            revision_opening=str(e.get("revision_opening") or "").strip(),
        )
        for e in sections["critiques"]
    )
    return Constitution(
        name=str(data["name"]).strip(),
        version=str(data["version"]).strip(),
        description=str(data.get("description", "")).strip(),
        critiques=critiques,
        preferences=tuple(PreferencePrinciple(**{k: str(e[k]).strip() for k in ENTRY_FIELDS["preferences"]}) for e in sections["preferences"]),
        few_shot=tuple(Demonstration(**{k: str(e[k]).strip() for k in ENTRY_FIELDS["few_shot"]}) for e in sections["few_shot"]),
        categories=tuple(declared),
        path=str(path),
        content_hash=content_hash(data),
        _by_id={c.id: c for c in critiques},
    )


def content_hash(data: dict[str, Any]) -> str:
    """Hash of the parsed content (not the bytes), so comments and formatting don't change it."""
    return fingerprint(data, sort_keys=True, ensure_ascii=False)


def _text(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and bool(str(value).strip())


def _declared_categories(data: dict[str, Any], problems: list[str]) -> list[str]:
    """The top-level `categories` list: the prompt categories principles may declare."""
    declared = data.get("categories")
    if declared is None:
        return []
    if not isinstance(declared, list) or not all(isinstance(c, str) and ID_PATTERN.match(c) for c in declared):
        problems.append("'categories' must be a list of category names (lowercase letters, digits, '-' or '_'), e.g. [violence, privacy]")
        return []
    return list(declared)


def _check_optional(label: str, key: str, kind: str, value: Any, declared: list[str], problems: list[str]) -> bool:
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{label} field {key!r}: must be non-empty text")
            return False
        return True
    if not isinstance(value, list) or not value:
        problems.append(f"{label} field {key!r}: must be a non-empty list of category names from the top-level 'categories'")
        return False
    ok = True
    for name in value:
        if not isinstance(name, str) or name not in declared:
            hint = closest(str(name), declared) if declared else "declare the categories in a top-level 'categories' list first"
            problems.append(f"{label} field {key!r}: {name!r} is not a declared category ({hint})")
            ok = False
    return ok


def _entries(data: dict[str, Any], section: str, problems: list[str], declared: list[str]) -> list[dict[str, Any]]:
    entries = data.get(section)
    if entries is None:
        return []
    if not isinstance(entries, list):
        problems.append(f"{section!r} must be a list of entries")
        return []
    fields = ENTRY_FIELDS[section]
    seen: dict[str, int] = {}
    valid: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        label = f"{section}[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a mapping with {', '.join(fields)}")
            continue
        if _text(entry.get("id")):
            label += f" (id {entry['id']!r})"
        ok = True
        optional = OPTIONAL_FIELDS.get(section, {})
        for key in entry:
            if key in optional:
                ok = _check_optional(label, key, optional[key], entry[key], declared, problems) and ok
            elif key not in fields:
                problems.append(f"{label}: unknown field {key!r} ({closest(str(key), list(fields) + list(optional))})")
                ok = False
        for key in fields:
            if key not in entry:
                problems.append(f"{label}: missing field {key!r}")
                ok = False
            elif not _text(entry[key]) or (key != "id" and not isinstance(entry[key], str)):
                problems.append(f"{label} field {key!r}: must be non-empty text, got {entry[key]!r}")
                ok = False
        entry_id = entry.get("id")
        if _text(entry_id):
            entry_id = str(entry_id)
            if not ID_PATTERN.match(entry_id):
                problems.append(f"{label} field 'id': use lowercase letters, digits, '-' or '_'")
                ok = False
            if entry_id in seen:
                problems.append(f"{label}: duplicate id {entry_id!r} (first at {section}[{seen[entry_id]}])")
                ok = False
            seen.setdefault(entry_id, index)
        if ok:
            valid.append(entry)
    return valid
