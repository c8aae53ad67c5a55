"""Measured FLOPs: count the matmuls a real forward pass executes with `torch.utils.flop_counter`.

This is the independent check on `harness.accounting`: it counts what the kernels were asked to do,
including capacity padding (the `padded` impl) and excluding dropped tokens.

FlopCounterMode has no formula for some ops we run, and silently counts them as 0. We register:
- `aten._grouped_mm` (the `grouped` impl on CUDA): 2 * rows * K * N summed over groups;
- `aten._scaled_dot_product_flash_attention_for_cpu` (+ backward), SDPA's CPU kernel: the same full
  (non-causal) count torch uses for its CUDA attention kernels.
Registration is skipped where torch already has a formula (newer versions) or lacks the op (older ones).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils import flop_counter

aten = torch.ops.aten


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """Each output element of a group is one K-long dot product: 2*K FLOPs.

    2D x 3D (jagged rows), 3D x 3D (batched) and 3D x 2D (jagged columns): 2 * numel(out) * K.
    2D x 2D (jagged K, the weight gradient): every (row, column) pair is summed over all of K once.
    """
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[-1]
    numel = 1
    for size in out_shape:
        numel *= size
    return 2 * numel * a_shape[-1]


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _register(op_name: str, formula) -> None:
    packet = getattr(aten, op_name, None)
    if packet is None or packet in flop_counter.flop_registry:
        return
    flop_counter.register_flop_formula(packet)(formula)


_register("_grouped_mm", _grouped_mm_flop)
_register("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop)
_register("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop)


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs FlopCounterMode records while running `fn(*args, **kwargs)`."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def measured_forward_flops_per_token(model: nn.Module, tokens: Tensor) -> float:
    """Forward FLOPs of `model(tokens)` divided by the number of tokens, without gradients.

    Runs in the model's current train/eval mode; compare with `accounting.forward_flops(model_cfg, moe,
    seq_len=tokens.shape[-1], training=model.training)`.
    """
    with torch.no_grad():
        total = count_flops(model, tokens)
    return total / tokens.numel()
