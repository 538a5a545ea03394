"""Progress bars for long loops; silenced by ``--quiet`` (env ``SEGAUDIT_QUIET=1``) or ``progress=False``."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless progress output is off."""
    if not enabled or os.environ.get("SEGAUDIT_QUIET"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
