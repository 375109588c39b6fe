"""Live progress bars for long loops: on a terminal only, so logs and CI stay quiet.

Example:
    >>> list(progress(range(3), 3, "count"))   # stderr is not a terminal here: the iterable itself
    [0, 1, 2]
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(it: Iterable[Any], total: int, desc: str, delay: float = 0.0) -> Iterable[Any]:
    """`it` with a bar (steps, rate, time left; `set_postfix` adds e.g. the loss) on stderr when stderr is a
    terminal, else `it` unchanged. The bar disappears when the loop ends; with `delay` it only appears
    once the loop has run that many seconds (short loops never flash one)."""
    if not sys.stderr.isatty():
        return it
    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, delay=delay, file=sys.stderr)
