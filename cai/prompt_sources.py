"""Prompt sets from a JSONL/JSON/CSV/Parquet file or a hub dataset, as uniform records."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import CaiError

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    kind: str
    category: str | None = None


def load_prompts(
    source: str,
    *,
    kind: str,
    column: str = "prompt",
    split: str = "train",
    limit: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    setting: str = "prompts",
) -> list[Prompt]:
    """Read, validate and (seeded) subsample a prompt set; an empty result is an error."""
    rows = _read_rows(source, split=split, setting=setting)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        if column not in row:
            raise CaiError(f"{setting}: {source} row {index + 1} has no column {column!r} (columns: {', '.join(map(str, row))}); set the column setting")
        text = row[column]
        if isinstance(text, list):  # conversational rows: take the first user turn
            text = next((m.get("content", "") for m in text if isinstance(m, dict) and m.get("role") == "user"), "")
        if not isinstance(text, str) or not text.strip():
            continue
        prompt_id = str(row.get("id", f"{kind}-{index:05d}"))
        if prompt_id in seen:
            raise CaiError(f"{setting}: {source} has duplicate id {prompt_id!r}; ids must be unique")
        seen.add(prompt_id)
        category = row.get("category")
        prompts.append(Prompt(id=prompt_id, prompt=text.strip(), kind=kind, category=str(category) if category else None))
    if not prompts:
        raise CaiError(f"{setting}: {source} holds no prompts (column {column!r}); add prompts or point at another file")
    if shuffle:
        random.Random(seed).shuffle(prompts)
    if limit is not None:
        if limit < 1:
            raise CaiError(f"{setting}: the limit must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def is_file_source(source: str) -> bool:
    """A prompt source names a file (else a hub dataset): a known suffix, an existing path, or a path prefix."""
    path = Path(source).expanduser()
    return path.suffix.lower() in FILE_SUFFIXES or path.exists() or source.startswith((".", "/", "~"))


def check_prompt_file(path: Path, setting: str) -> None:
    """The file exists and, unless Parquet, is UTF-8 text (a binary or Latin-1 file is one error, not a traceback)."""
    if not path.is_file():
        raise CaiError(f"{setting}: prompt file {path} not found; check the path")
    if path.suffix.lower() == ".parquet":
        return
    try:
        with path.open(encoding="utf-8") as handle:
            while handle.read(1 << 20):
                pass
    except UnicodeDecodeError as error:
        raise not_utf8(path, setting, error) from None


def not_utf8(path: Path, setting: str, error: UnicodeDecodeError) -> CaiError:
    return CaiError(f"{setting}: {path} is not UTF-8 text (byte {error.object[error.start : error.start + 1]!r} cannot be decoded); save it as UTF-8")


def _read_rows(source: str, *, split: str, setting: str) -> list[dict[str, Any]]:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if is_file_source(source):
        check_prompt_file(path, setting)
        if suffix == ".jsonl":
            return _read_jsonl(path, setting)
        if suffix not in FILE_SUFFIXES:
            raise CaiError(f"{setting}: {source} has an unsupported extension; use .jsonl, .json, .csv or .parquet")
        return _read_with_datasets(FILE_SUFFIXES[suffix], str(path), split="train", source=source, setting=setting)
    return _read_with_datasets(source, None, split=split, source=source, setting=setting)


def _read_jsonl(path: Path, setting: str) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path, setting)]


def read_jsonl(path: str | Path, setting: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is an error naming file and line."""
    rows = []
    try:
        with Path(path).open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CaiError(f"{setting}: {path}:{number}: invalid JSON ({error.msg}); fix that line") from None
                if not isinstance(row, dict):
                    raise CaiError(f"{setting}: {path}:{number}: expected a JSON object per line")
                rows.append((number, row))
    except UnicodeDecodeError as error:
        raise not_utf8(Path(path), setting, error) from None
    return rows


def _read_with_datasets(name: str, data_files: str | None, *, split: str, source: str, setting: str) -> list[dict[str, Any]]:
    import datasets

    try:
        if data_files is None:
            dataset = datasets.load_dataset(name, split=split)
        else:
            dataset = datasets.load_dataset(name, data_files=data_files, split=split)
    except Exception as error:  # datasets raises many types for offline / missing hub data
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CaiError(f"{setting}: cannot load {source!r} ({message}); use a local .jsonl/.csv/.parquet file or a hub dataset available offline") from None
    return [dict(row) for row in dataset]
