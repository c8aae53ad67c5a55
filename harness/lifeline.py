"""Child processes that die with their parent: a worker with the runner, torchrun with the runner and
a rank with torchrun. Torch-free, so a process asks for it before the seconds-long torch import."""
from __future__ import annotations

import os
import signal


def die_with_parent() -> None:
    """Linux: if the parent is killed (even with SIGKILL), this process goes too instead of lingering.

    Called before torch is imported: the import takes seconds, and a parent killed during it must
    not leave an orphan behind.
    """
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
