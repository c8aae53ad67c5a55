"""Routing statistics of MoE layers, accumulated on device between `reset` and `collect`.

Per layer (tallies summed over every forward since `reset`):
- `dropped_fraction`: token-slots dropped by capacity / token-slots routed (T*k); for expert choice,
  the fraction of tokens that no expert picked;
- `tokens_per_expert`: assignments each expert received before capacity;
- `load_cv`: std/mean of `tokens_per_expert` (population std); `max_mean_load`: max/mean of it;
- `experts_unused`: experts that received no assignment;
- `router_entropy`: mean over tokens of the entropy (nats) of the router distribution;
- `realized_capacity_factor`: rows each expert had to provide (capacity, or the largest group when
  dropless) / (k*T/E), i.e. the capacity factor the batch actually needed or got;
- `aux_loss`, `z_loss`, `importance_loss`: coefficient-free losses, mean over forwards;
- `causal`: False for expert-choice routing, whose decisions depend on the whole batch.

The case aggregate is the mean over MoE layers, except `dropped_fraction` (pooled over layers),
`experts_unused` (summed over layers) and `causal` (all layers causal).
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from harness.models.moe.layer import LOSS_NAMES, MoELayer
from harness.results import columns_in

CASE_COLUMNS = columns_in("routing")
_MEANED = ("load_cv", "max_mean_load", "router_entropy", "realized_capacity_factor", *LOSS_NAMES)


def moe_layers(model: nn.Module) -> list[tuple[int, MoELayer]]:
    """(transformer layer index, layer) for every MoE layer, in model order, as the model lists them
    (`routing_layers()`: the harness's own and Hugging Face ones, whose objects carry a `tally`); a
    bare module (one MoE layer in a test) numbers its MoE layers from 0."""
    if hasattr(model, "routing_layers"):
        return model.routing_layers()
    return list(enumerate(m for m in model.modules() if isinstance(m, MoELayer)))


def reset(model: nn.Module) -> None:
    """Start counting: clear the tallies (and ask a model that records only on request to record)."""
    for _, layer in moe_layers(model):
        layer.tally.reset()
    if hasattr(model, "record_routing"):
        model.record_routing(True)


def layer_stats(tally: dict) -> dict:
    """Statistics of one layer from its host tally (`RoutingTally.host()`)."""
    routed = tally["routed"]
    mean = sum(routed) / len(routed)
    std = math.sqrt(sum((n - mean) ** 2 for n in routed) / len(routed))
    return {
        "dropped_fraction": tally["dropped"] / tally["drop_total"] if tally["drop_total"] else math.nan,
        "load_cv": std / mean if mean else math.nan,
        "max_mean_load": max(routed) / mean if mean else math.nan,
        "experts_unused": sum(1 for n in routed if n == 0),
        "router_entropy": tally["entropy"] / tally["tokens"],
        "realized_capacity_factor": (
            tally["rows"] * tally["num_experts"] / tally["slots"] if tally["slots"] else math.nan
        ),
        **{name: tally[name] / tally["forwards"] for name in LOSS_NAMES},
        "causal": tally["causal"],
        "tokens_per_expert": [int(n) for n in routed],
    }


def collect(model: nn.Module) -> tuple[dict, list[dict]]:
    """(case-level aggregate with `CASE_COLUMNS`, per-layer rows) since the last `reset`.
    ({}, []) for dense models or when no MoE forward ran."""
    if hasattr(model, "record_routing"):
        model.record_routing(False)
    rows, pooled_dropped, pooled_total = [], 0.0, 0
    for index, layer in moe_layers(model):
        tally = layer.tally.host()
        if tally is None:
            continue
        rows.append({"layer": index, **layer_stats(tally)})
        pooled_dropped += tally["dropped"]
        pooled_total += tally["drop_total"]
    if not rows:
        return {}, []
    case = {name: sum(r[name] for r in rows) / len(rows) for name in _MEANED}
    case["dropped_fraction"] = pooled_dropped / pooled_total if pooled_total else math.nan
    case["experts_unused"] = sum(r["experts_unused"] for r in rows)
    case["causal"] = all(r["causal"] for r in rows)
    return {name: case[name] for name in CASE_COLUMNS}, rows


def mean_losses(per_layer: list[dict[str, Tensor]]) -> dict[str, float]:
    """Coefficient-free aux losses averaged over MoE layers ({} when there are none)."""
    per_layer = [losses for losses in per_layer if losses]
    if not per_layer:
        return {}
    return {name: sum(float(v[name]) for v in per_layer) / len(per_layer) for name in LOSS_NAMES}


def last_losses(model: nn.Module) -> dict[str, float]:
    """The aux losses of the latest forward, mean over MoE layers ({} for dense)."""
    return mean_losses([layer.last_losses for _, layer in moe_layers(model) if layer.last_losses])
