"""The one content fingerprint: the first 16 hex digits of a SHA-256.

Manifests record fingerprints of what a stage's records depend on (prompts, settings,
constitution), so a resume on other inputs is refused (`run_store.check_same_inputs`) and a
constitution is identified by content. Callers choose the JSON spelling (`sort_keys`,
`ensure_ascii`) their manifests have always used, so fingerprints of existing runs stay valid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """`digest` of `value` as JSON; objects JSON cannot write are written with `str`."""
    return digest(json.dumps(value, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str))


def files_stamp(path: str | Path) -> list[list[Any]] | None:
    """(name, size, mtime_ns) of each file in a saved model directory, so a retrained or replaced
    model changes the fingerprint without hashing gigabytes; None for what is not a directory (a hub id)."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    # README.md is the model card (cai/cards.py), rewritten as the run goes on; it is not the model
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file() and p.name != "README.md"]
