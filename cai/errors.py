"""One error family for user mistakes, turned into one line and exit code 2 by the launchers."""

from __future__ import annotations

import sys
from typing import Callable


class CaiError(Exception):
    """A mistake the user can fix: bad YAML, unknown key, missing file, empty prompt set.

    Messages read `<where>: <what>; <fix>` so the single printed line is enough to act on.
    """


def exit_on_user_error(main: Callable[[], int]) -> int:
    """Run `main`, turning a `CaiError` into one stderr line and exit code 2 (no traceback)."""
    try:
        return main()
    except CaiError as error:
        print(f"cai: error: {error}", file=sys.stderr)
        return 2
