"""Turn a built model into this rank's part: keep the local experts, swap in the all-to-all dispatch
and set up the gradient synchronisation."""
from __future__ import annotations

import torch
from torch import nn

from harness.models.moe.experts import Experts
from harness.models.moe.layer import MoELayer
from harness.parallel.comm import CommRecorder
from harness.parallel.data import GradientSync
from harness.parallel.expert import ExpertParallelDispatch
from harness.parallel.group import ProcessGroups


def local_experts(experts: Experts, keep: range) -> Experts:
    """The experts in `keep`, with the same weights (every rank built the whole seeded model)."""
    local = Experts(len(keep), experts.d_model, experts.d_ff, experts.activation)
    with torch.no_grad():
        local.w_in.copy_(experts.w_in[keep.start:keep.stop])
        local.w_out.copy_(experts.w_out[keep.start:keep.stop])
    return local


def parallelize(model: nn.Module, groups: ProcessGroups, recorder: CommRecorder) -> GradientSync:
    """Shard the experts of every MoE layer across the EP group (in place) and return the gradient
    synchronisation for the result. With ep_size 1 the model is unchanged (pure data parallel)."""
    layout = groups.layout
    expert_params: list[nn.Parameter] = []
    if layout.ep_size > 1:
        for layer in (m for m in model.modules() if isinstance(m, MoELayer)):
            layer.experts = local_experts(layer.experts, layout.local_experts(layer.num_experts))
            layer.dispatch = ExpertParallelDispatch(groups.ep, layout.ep_rank, layout.ep_size, recorder)
            expert_params += list(layer.experts.parameters())
    return GradientSync(model, expert_params, groups.world, groups.expert_dp, layout.world_size, recorder)
