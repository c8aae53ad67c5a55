"""Inference over full sequences (prefill-style): one forward pass without autograd."""
from __future__ import annotations

import torch

from harness.config import Case
from harness.workloads import Workload, sample_tokens


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    model.eval()
    inputs = sample_tokens(case, device)[:, :-1]

    @torch.inference_mode()
    def step() -> None:
        model(inputs)

    return Workload(step, inputs.numel(), training=False)
