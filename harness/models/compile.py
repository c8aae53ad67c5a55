"""`run.compile`: torch.compile a model of either source in place, and account for compile time apart
from step time.

Compilation happens lazily, inside the first calls of each new input shape (a decode workload's
prefill, its one-token steps, a training step's backward); warmup runs until step times settle, so the
timed steps see compiled code. `compile_seconds` reads TorchDynamo's own timers of its compile passes,
so the time reported as `compile_s` is the time spent compiling, wherever it fell.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Union

import torch
from torch import nn

MIN_TORCH = (2, 6)  # torch.compiler.set_stance, used to count FLOPs on the eager model


def torch_problem() -> Optional[str]:
    """Why `run.compile` cannot be used with this torch, or None."""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        return f"run.compile needs torch >= {'.'.join(map(str, MIN_TORCH))} (found {torch.__version__})"
    return None


def compile_model(model: nn.Module, setting: Union[bool, str]) -> None:
    """Compile `model` in place (its attributes and methods stay reachable): true is the default mode."""
    if setting is False:
        return
    model.compile(mode=None if setting is True else setting)


@contextmanager
def eager() -> Iterator[None]:
    """Run compiled models eagerly inside this block (for FLOP counting and correctness checks);
    with torch < 2.6 nothing is compiled (`torch_problem`), so there is nothing to bypass."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


def compile_seconds() -> float:
    """Seconds this process has spent compiling with torch.compile so far (TorchDynamo's own timers)."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(sum(times) for name, times in compilation_time_metrics.items() if name.endswith("compile_inner")))
