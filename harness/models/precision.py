"""Float32 islands in a low-precision model: the router, and the norm that feeds it, never round.

Routing is a discrete choice: in bfloat16 a router rounds its inputs and weights and sends tokens to
different experts than the same model in float32 (Switch Transformer's "selective precision" keeps the
router in float32; a bfloat16 router diverged in its Table 2). A `Float32Module` keeps its floating
parameters and buffers in float32 when the model around it is cast (`model.to(torch.bfloat16)`); moves
between devices still apply.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Float32Module(nn.Module):
    def _apply(self, fn, recurse=True):
        kept = [(module, name, tensor.detach()) for module in self.modules()
                for table in (module._parameters, module._buffers) for name, tensor in table.items()
                if tensor is not None and tensor.dtype == torch.float32]
        super()._apply(fn, recurse)
        for module, name, old in kept:
            new = getattr(module, name)
            if new.dtype == torch.float32:
                continue
            if isinstance(new, nn.Parameter):
                new.data = old.to(new.device)
            else:
                module._buffers[name] = old.to(new.device)
        return self


class Float32Norm(Float32Module):
    """A norm computed in float32 on the float32 value of its input, returning float32: the MoE layer's
    router reads it unrounded, its experts cast it to the model dtype."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.float())
