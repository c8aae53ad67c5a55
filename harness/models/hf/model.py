"""A transformers `*ForCausalLM` behind the harness's model interface, so every workload, the worker's
probe and the routing statistics run on it unchanged.

- `forward(tokens, caches=None, start=0) -> (logits, aux_loss)`: `aux_loss` is transformers' own
  load-balancing loss times its `router_aux_loss_coef`, in training only (as transformers trains).
- `make_caches` returns transformers' `DynamicCache` (what `generate()` uses); a forward at position
  `start` first crops the cache back to `start` tokens, so decoding can restart from one prefix.
- Routing statistics: while the worker records (`record_routing(True)`, its probe step only), the
  forward asks for `output_router_logits` and each MoE layer's `RouterTap` tallies the router logits
  into the same statistics the harness's own layers report. Timed steps ask for nothing extra.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from harness.config import Case
from harness.models.moe.layer import BatchCounts, aux_losses
from harness.models.moe.router import Routing, histogram, slot_major
from harness.models.moe.stats import RoutingTally


def routing_of(logits: Tensor, k: int, renormalize: bool) -> Routing:
    """The top-k softmax routing these families compute from their router logits, in fp32."""
    logits = logits.float()
    probs = logits.softmax(-1)
    weight, idx = probs.topk(k, dim=-1)
    if renormalize:
        weight = weight / weight.sum(-1, keepdim=True)
    token, expert, weight = slot_major(idx, weight)
    return Routing(logits, probs, token, expert, weight)


class LazyLosses(Mapping):
    """The coefficient-free auxiliary losses of one forward, computed from its router logits only when
    read (after timing), so a timed step does no work that transformers would not do."""

    def __init__(self, logits: Tensor, k: int, renormalize: bool):
        self._args, self._losses = (logits.detach(), k, renormalize), None

    def _computed(self) -> dict[str, Tensor]:
        if self._losses is None:
            routing = routing_of(*self._args)
            routed = histogram(routing.expert, routing.probs.shape[1])
            self._losses, _ = aux_losses(routing, BatchCounts(routing.logits.shape[0], routed, routed, None))
        return self._losses

    def __getitem__(self, name: str) -> Tensor:
        return self._computed()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._computed())

    def __len__(self) -> int:
        return len(self._computed())


class RouterTap:
    """One MoE layer's routing, seen through its router logits: a tally like `MoELayer.tally` (these
    families are dropless, so nothing is dropped and the largest group sets the rows an expert needs)."""

    def __init__(self, num_experts: int, k: int, renormalize: bool):
        self.k, self.renormalize = k, renormalize
        self.tally = RoutingTally(num_experts, causal=True)
        self.last_losses: Mapping[str, Tensor] = {}
        self.last_router: dict[str, Tensor] = {}

    @torch.no_grad()
    def record(self, logits: Tensor) -> None:
        routing = routing_of(logits, self.k, self.renormalize)
        routed = histogram(routing.expert, routing.probs.shape[1])
        T = logits.shape[0]
        losses, entropy = aux_losses(routing, BatchCounts(T, routed, routed, None))
        scalars = torch.stack([torch.zeros((), device=logits.device), routed.max().float(), entropy,
                               losses["aux_loss"], losses["z_loss"], losses["importance_loss"]])
        self.tally.update(tokens=T, slots=T * self.k, drop_total=T * self.k, routed=routed, scalars=scalars)


class HFCausalLM(nn.Module):
    def __init__(self, hf: nn.Module, case: Case):
        super().__init__()
        self.hf = hf
        self.config, self.moe_config = case.model, case.moe
        moe = case.moe
        self.moe_indices = [i for i in range(case.model.n_layers) if moe is not None and moe.is_moe_layer(i)]
        self.taps = [RouterTap(moe.experts, moe.k, moe.setting("renormalize")) for _ in self.moe_indices] if moe else []
        self.recording = False
        params = inspect.signature(hf.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x

    @property
    def impl_label(self) -> str:
        """The experts implementation transformers resolved, as the `impl` column shows it."""
        return f"hf:{self.hf.config._experts_implementation}"

    def record_routing(self, on: bool) -> None:
        self.recording = on

    def routing_layers(self) -> list[tuple[int, RouterTap]]:
        """(transformer layer index, tap) for every MoE layer, for `harness.metrics.routing`."""
        return list(zip(self.moe_indices, self.taps))

    def moe_layers(self) -> list[RouterTap]:
        return self.taps

    def make_caches(self, batch: int, device, dtype):  # noqa: ARG002 - the cache allocates as it fills
        from transformers import DynamicCache

        return DynamicCache()

    def forward(self, tokens: Tensor, caches=None, start: int = 0) -> tuple[Tensor, Tensor]:
        kwargs = {"use_cache": caches is not None}
        if caches is not None:
            seen = caches.get_seq_length()
            if seen > start:
                caches.crop(start - seen)
            kwargs[self._cache_arg] = caches
        routed = bool(self.taps) and (self.training or self.recording)
        out = self.hf(input_ids=tokens, output_router_logits=routed, **kwargs)
        aux = torch.zeros((), device=tokens.device)
        if routed:
            for tap, logits in zip(self.taps, out.router_logits):
                tap.last_losses = LazyLosses(logits, tap.k, tap.renormalize)
                if self.recording:
                    tap.record(logits)
            if self.training:
                aux = self.hf.config.router_aux_loss_coef * out.aux_loss
        return out.logits, aux

    def on_optimizer_step(self) -> None:
        """Nothing to update outside the gradient (the harness's sigmoid_bias router has no hf family)."""
