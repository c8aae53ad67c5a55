"""Routing tallies kept on the layer's device and summed over forward passes without host syncs.

`harness.metrics.routing` turns a tally into statistics; this module only counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class RoutingTally:
    num_experts: int
    causal: bool = True
    forwards: int = 0
    tokens: int = 0
    slots: int = 0  # assignments asked for: T*k for token choice (each is a "token-slot")
    ideal_rows: float = 0.0  # sum over forwards of k*T (what perfect balance needs, all experts together)
    drop_total: int = 0  # denominator of the dropped fraction: slots (token choice) or tokens (expert choice)
    sums: dict[str, Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        self.forwards = self.tokens = self.slots = self.drop_total = 0
        self.ideal_rows = 0.0
        self.sums = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach()
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    @torch.no_grad()
    def update(
        self,
        *,
        tokens: int,
        slots: int,
        routed: Tensor,
        dropped: Tensor,
        drop_total: int,
        rows: Tensor,
        entropy_sum: Tensor,
        losses: dict[str, Tensor],
    ) -> None:
        """`routed`: [E] assignments per expert before capacity; `dropped`: slots (token choice) or
        tokens (expert choice) that got no expert; `rows`: rows per expert the layer had to provide
        (capacity, or the largest group when dropless)."""
        self.forwards += 1
        self.tokens += tokens
        self.slots += slots
        self.ideal_rows += slots
        self.drop_total += drop_total
        self._add("routed", routed.to(torch.float64))
        self._add("dropped", dropped.to(torch.float64))
        self._add("rows", rows.to(torch.float64) * self.num_experts)
        self._add("entropy", entropy_sum.to(torch.float64))
        for name, value in losses.items():
            self._add(name, value.to(torch.float64))

    def host(self) -> Optional[dict]:
        """The tally as Python numbers (one sync), or None if nothing was routed since reset."""
        if not self.forwards:
            return None
        out = {name: value.tolist() for name, value in self.sums.items()}
        out.update(
            num_experts=self.num_experts, causal=self.causal, forwards=self.forwards,
            tokens=self.tokens, slots=self.slots, ideal_rows=self.ideal_rows, drop_total=self.drop_total,
        )
        return out
