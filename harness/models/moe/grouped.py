"""Grouped expert GEMMs: every expert's tokens times that expert's matrices, without padding.

On CUDA with bf16 (sm90+, widths multiples of 8) `F.grouped_mm` runs each projection as one kernel.
Elsewhere (CPU, fp32, older torch) two custom autograd functions loop over experts with `torch.mm` on contiguous slices,
fusing the token gather into the first projection and the weighted scatter-add into the second:
per-expert temporaries are small, so the allocator reuses them, while full-size `[k*T, d]` copies of
the gathered inputs and outputs are fresh allocations, and on CPU first-touching fresh memory costs
about as much as a third of the matmul time (measured at d=512, 4096 tokens). Backward recomputes the
gathers instead of saving the gathered copies. Without autograd (inference) each expert's chunk runs
end to end (gather, GEMM, activation, GEMM, weighted scatter-add), so not even the `[N, f]` hidden
tensor is materialised. Expert counts come to the host once (`sizes`).

Shapes: `x [T, d]`; `token [N]` rows grouped by expert with `sizes[e]` rows each; `w_in [E, f', d]`
(`nn.Linear` layout); `w_out [E, f, d]`; `weight [N]` combine weights.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function


def native_grouped_mm_available(x: Tensor, *weights: Tensor) -> bool:
    """`F.grouped_mm` is one fused, sync-free kernel only on CUDA sm90+ in bf16 (sm80 runs a fallback
    loop with a host sync), and it needs 16-byte aligned strides: every width a multiple of 8 in bf16."""
    if not hasattr(F, "grouped_mm") or x.device.type != "cuda" or x.dtype != torch.bfloat16:
        return False
    return grouped_mm_aligned(x, *weights) and torch.cuda.get_device_capability(x.device) >= (9, 0)


def grouped_mm_aligned(*tensors: Tensor) -> bool:
    """Strides in multiples of 16 bytes, as `F.grouped_mm` requires: the last dimension of every tensor
    and, for stacked expert weights (3-D, also used transposed), the one before it."""
    sizes = [(t, t.shape[-1]) for t in tensors] + [(t, t.shape[-2]) for t in tensors if t.dim() == 3]
    return all(size * t.element_size() % 16 == 0 for t, size in sizes)


def _empty_grad(w: Tensor, sizes: list[int]) -> Tensor:
    """Gradient buffer for stacked expert weights: only experts without tokens are zero-filled, the
    others are overwritten (a full zero fill is a second pass over all expert weights)."""
    grad = torch.empty_like(w, memory_format=torch.contiguous_format)
    for e, n in enumerate(sizes):
        if not n:
            grad[e].zero_()
    return grad


class _GatherMM(Function):
    """`h[rows of e] = x[token of those rows] @ w[e].T`, with `w` `[E, out, in]`."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, token: Tensor, sizes: list[int]) -> Tensor:
        ctx.save_for_backward(x, w, token)
        ctx.sizes = sizes
        out = x.new_empty(token.numel(), w.shape[1])
        for e, (tok_e, out_e) in enumerate(zip(token.split(sizes), out.split(sizes))):
            if tok_e.numel():
                torch.mm(x.index_select(0, tok_e), w[e].t(), out=out_e)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w, token = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        grad = grad.contiguous()
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = _empty_grad(w, ctx.sizes) if need_w else None
        for e, (tok_e, g_e) in enumerate(zip(token.split(ctx.sizes), grad.split(ctx.sizes))):
            if not tok_e.numel():
                continue
            if grad_x is not None:
                grad_x.index_add_(0, tok_e, g_e @ w[e])
            if grad_w is not None:
                torch.mm(g_e.t(), x.index_select(0, tok_e), out=grad_w[e])
        return grad_x, grad_w, None, None


class _MMScatter(Function):
    """`out[t] = sum over rows r of token t of weight[r] * (h[r] @ w[e(r)])`, with `w` `[E, in, out]`.

    Backward needs no saved output: with `u = g_r @ w_e.T`, `grad_weight_r = u . h_r`,
    `grad_h_r = weight_r * u` and `grad_w_e = h_e.T @ (weight * g)_e`.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, token: Tensor, weight: Tensor, sizes: list[int],
                num_tokens: int) -> Tensor:
        ctx.weight_dtype = weight.dtype
        weight = weight.to(h.dtype)
        ctx.save_for_backward(h, w, token, weight)
        ctx.sizes = sizes
        out = h.new_zeros(num_tokens, w.shape[2])
        parts = zip(h.split(sizes), token.split(sizes), weight.unsqueeze(1).split(sizes))
        for e, (h_e, tok_e, s_e) in enumerate(parts):
            if tok_e.numel():
                out.index_add_(0, tok_e, torch.mm(h_e, w[e]).mul_(s_e))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, w, token, weight = ctx.saved_tensors
        need_h, need_w, _, need_weight = ctx.needs_input_grad[:4]
        sizes = ctx.sizes
        grad_h = torch.empty_like(h) if need_h or need_weight else None
        grad_w = _empty_grad(w, sizes) if need_w else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        n = len(sizes)
        parts = zip(
            h.split(sizes), token.split(sizes), weight.unsqueeze(1).split(sizes),
            grad_h.split(sizes) if grad_h is not None else [None] * n,
            grad_weight.split(sizes) if grad_weight is not None else [None] * n,
        )
        for e, (h_e, tok_e, s_e, gh_e, gs_e) in enumerate(parts):
            if not tok_e.numel():
                continue
            g_e = grad.index_select(0, tok_e)
            if gh_e is not None:
                torch.mm(g_e, w[e].t(), out=gh_e)
                if gs_e is not None:
                    torch.sum(gh_e * h_e, dim=1, out=gs_e)
                gh_e.mul_(s_e)
            if grad_w is not None:
                torch.mm(h_e.t(), g_e.mul_(s_e), out=grad_w[e])
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return (grad_h if need_h else None), grad_w, None, grad_weight, None, None


def grouped_ffn(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    act: Callable[[Tensor], Tensor],
    token: Tensor,
    weight: Tensor,
    counts: Tensor,
    sizes: Callable[[], list[int]],
    native: Optional[bool] = None,
) -> Tensor:
    """`out[t] = sum over rows r of t: weight[r] * act(x[t] @ w_in[e].T) @ w_out[e]`, e the row's expert.

    `sizes` is called only on the per-expert path (it syncs the counts to the host). `native` forces
    (True) or forbids (False) `F.grouped_mm`; by default it is used where it is one fused kernel.
    """
    if native if native is not None else native_grouped_mm_available(x, w_in, w_out):
        offsets = counts.cumsum(0).to(torch.int32)
        h = act(F.grouped_mm(x.index_select(0, token), w_in.transpose(-2, -1), offs=offsets))
        y = F.grouped_mm(h, w_out, offs=offsets) * weight.unsqueeze(1).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, y)
    rows = sizes()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w_in, w_out, weight)):
        h = act(_GatherMM.apply(x, w_in, token, rows))
        return _MMScatter.apply(h, w_out, token, weight, rows, x.shape[0])
    # Inference: run each expert's chunk end to end, so no [N, f] intermediate is materialised.
    out = torch.zeros_like(x)
    for e, (tok_e, s_e) in enumerate(zip(token.split(rows), weight.unsqueeze(1).split(rows))):
        if tok_e.numel():
            h_e = act(x.index_select(0, tok_e) @ w_in[e].t())
            out.index_add_(0, tok_e, (h_e @ w_out[e]).mul_(s_e.to(x.dtype)))
    return out
