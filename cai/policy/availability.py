"""Is trl's PPO installed? Asked at config load, before any model loads, without importing trl.

trl kept PPO in `trl.experimental.ppo` from 1.10 to 1.12 and removed it in 1.13, so `cai`
requires only `trl>=1.10` (everything but PPO runs on a current trl) and PPO's `trl<1.13`
lives in the `ppo` extra. A config with `rl.algorithm=ppo` and the policy stage selected is
refused at load (`python -m cai validate` included) when the module is missing, naming both
fixes; `import_ppo` turns a failed import at run time into the same one line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from cai.errors import CaiError

PPO_MODULE = "trl.experimental.ppo"
PPO_REQUIREMENT = "trl>=1.10,<1.13"
ALTERNATIVES = ("dpo", "grpo", "rloo")


def trl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def ppo_missing_reason() -> str | None:
    """Why `trl.experimental.ppo` cannot be imported here, or None when it can (read from disk, trl not imported)."""
    if PPO_MODULE in sys.modules:  # already imported, or blocked (a None entry makes `import` fail)
        return None if sys.modules[PPO_MODULE] is not None else f"{PPO_MODULE} cannot be imported"
    try:
        spec = importlib.util.find_spec("trl")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return "trl is not installed"
    for location in spec.submodule_search_locations:
        package = Path(location) / "experimental"
        if (package / "ppo" / "__init__.py").is_file() or (package / "ppo.py").is_file():
            return None
    return f"trl {trl_version() or '(unknown version)'} is installed and has no {PPO_MODULE} (removed in trl 1.13)"


def ppo_message(reason: str) -> str:
    """The one line: `<where>: <what>; <fix>`, with both fixes."""
    return (
        f"rl.algorithm: ppo runs trl's PPOTrainer ({PPO_MODULE}, {PPO_REQUIREMENT}), but {reason}; "
        f"install the PPO extra (pip install 'cai[ppo]', or pip install '{PPO_REQUIREMENT}'), or choose rl.algorithm={', '.join(ALTERNATIVES[:-1])} or {ALTERNATIVES[-1]}"
    )


def ppo_problem() -> str | None:
    reason = ppo_missing_reason()
    return ppo_message(reason) if reason else None


def import_ppo() -> Any:
    """`trl.experimental.ppo`, or the one-line error when this trl has none."""
    try:
        return importlib.import_module(PPO_MODULE)
    except ImportError as error:
        raise CaiError(ppo_message(f"importing it failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})")) from None
