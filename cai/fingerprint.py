"""The one content fingerprint: the first 16 hex digits of a SHA-256.

Manifests record fingerprints of what a stage's records depend on (prompts, settings,
constitution), so a resume on other inputs is refused (`run_store.check_same_inputs`) and a
constitution is identified by content. Callers choose the JSON spelling (`sort_keys`,
`ensure_ascii`) their manifests have always used, so fingerprints of existing runs stay valid.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(value: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """`digest` of `value` as JSON; objects JSON cannot write are written with `str`."""
    return digest(json.dumps(value, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str))
