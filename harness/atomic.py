"""Replacing a file whole: a reader sees the old file or the new one, never half of either.

Run tables, the worker's result, a compare reference and a history entry are all written this way.
Torch- and pandas-free, so the worker process can use it without importing the store.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a temporary file beside `path`, then rename it over `path`. A failed write (a full disk,
    a signal) leaves `path` as it was and no temporary file behind. The temporary name is hidden and
    unique to the process, so two writers never share one and folder globs skip it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
