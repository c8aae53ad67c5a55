"""Routing tallies kept on the layer's device and summed over forward passes without host syncs.

`harness.metrics.routing` turns a tally into statistics; this module only counts. Per forward it
costs two small adds, so tallies can stay on while timing. The adds are out of place: a tally begun
under `torch.inference_mode` (decode's prefill) holds inference tensors, which later forwards outside
that mode (the worker's probe) may not update in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

# Per-forward scalars, in the order `RoutingTally.update` expects them.
SCALARS = ("dropped", "rows", "entropy", "aux_loss", "z_loss", "importance_loss")


@dataclass
class RoutingTally:
    num_experts: int
    causal: bool = True
    forwards: int = 0
    tokens: int = 0
    slots: int = 0  # assignments asked for: T*k per forward (token-slots)
    drop_total: int = 0  # denominator of the dropped fraction: slots (token choice) or tokens (expert choice)
    routed: Optional[Tensor] = None  # [E] float64, assignments per expert before capacity
    scalars: Optional[Tensor] = None  # [len(SCALARS)] float64 sums

    def reset(self) -> None:
        self.forwards = self.tokens = self.slots = self.drop_total = 0
        self.routed = self.scalars = None

    @torch.no_grad()
    def update(self, *, tokens: int, slots: int, drop_total: int, routed: Tensor, scalars: Tensor) -> None:
        """`scalars` holds, for this forward: slots (token choice) or tokens (expert choice) that got
        no expert; rows each expert had to provide (capacity, or the largest group when dropless);
        the sum over tokens of router entropy; the three coefficient-free aux losses."""
        self.forwards += 1
        self.tokens += tokens
        self.slots += slots
        self.drop_total += drop_total
        if self.routed is None:
            self.routed = routed.to(torch.float64)
            self.scalars = scalars.to(torch.float64)
        else:
            self.routed = self.routed + routed
            self.scalars = self.scalars + scalars

    def host(self) -> Optional[dict]:
        """The tally as Python numbers (one sync), or None if nothing was routed since reset."""
        if not self.forwards:
            return None
        return dict(
            zip(SCALARS, self.scalars.tolist()),
            routed=self.routed.tolist(), num_experts=self.num_experts, causal=self.causal,
            forwards=self.forwards, tokens=self.tokens, slots=self.slots, drop_total=self.drop_total,
        )
