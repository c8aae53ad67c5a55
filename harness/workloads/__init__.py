"""Workloads: what one timed step does to a model. Adding one is a module plus one line in REGISTRY."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from harness.config import Case
from harness.parallel.group import local_rows


@dataclass
class Workload:
    """What the worker times: `step` runs once per timed iteration.

    `finish` runs once after timing and returns extra result columns (e.g. a quality workload
    trains on to its budget and evaluates); it must not change what was timed.
    """

    step: Callable[[], None]
    tokens_per_step: int
    training: bool
    last_loss: Callable[[], float | None] = lambda: None
    finish: Callable[[], dict[str, Any]] = dict
    context_len: int | None = None  # mean attention context per token, when not model.seq_len (decode)
    step_log: Callable[[], list[dict[str, float]]] = list  # per-step losses of a training workload
    optimizer: torch.optim.Optimizer | None = None  # a training workload's, for data-parallel gradient sync


def sample_tokens(case: Case, device: torch.device) -> torch.Tensor:
    """A fixed random batch: throughput does not depend on token identity, and this needs no data.
    In a multi-rank case `run.batch_size` is the global batch and this rank gets its rows of it."""
    generator = torch.Generator().manual_seed(case.run.seed + 1)
    shape = (case.run.batch_size, case.model.seq_len + 1)
    return local_rows(torch.randint(0, case.model.vocab_size, shape, generator=generator)).to(device)


def _registry() -> dict[str, Callable[[torch.nn.Module, Case, torch.device], Workload]]:
    from harness.workloads import decode, forward, quality, train_step

    return {"train_step": train_step.make, "forward": forward.make, "decode": decode.make, "quality": quality.make}


def make_workload(name: str, model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    """A built-in workload by name, or a user's `package.module:function` with the same signature."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        return getattr(importlib.import_module(module_name), attr)(model, case, device)
    return _registry()[name](model, case, device)
