"""MoE layer: dense equivalence, capacity and dropping, gradients to the router."""
import math

import pytest
import torch

from harness.config import ModelConfig, MoEConfig
from harness.models.dense import FeedForward
from harness.models.moe.layer import MoELayer

MODEL = ModelConfig(d_model=32, d_ff=64)


def _layer(model=MODEL, seed=0, **moe):
    torch.manual_seed(seed)
    return MoELayer(model, MoEConfig(**moe))


@pytest.mark.parametrize("impl", ["loop", "grouped", "padded"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_one_expert_top1_dropless_equals_dense_ffn(impl, activation):
    model = ModelConfig(d_model=32, d_ff=64, activation=activation)
    layer = _layer(model, num_experts=1, top_k=1, capacity_factor=None, impl=impl)
    dense = FeedForward(32, 64, activation)
    with torch.no_grad():
        dense.w_in.weight.copy_(layer.experts.w_in[0].t())
        dense.w_out.weight.copy_(layer.experts.w_out[0].t())
    x = torch.randn(2, 10, 32)
    y, _ = layer(x)
    torch.testing.assert_close(y, dense(x))


@pytest.mark.parametrize("impl", ["loop", "grouped", "padded"])
def test_over_capacity_assignments_contribute_zero(impl):
    layer = _layer(num_experts=4, top_k=1, capacity_factor=0.5, impl=impl)
    with torch.no_grad():  # every token prefers expert 2
        layer.router.weight.zero_()
        layer.router.weight[2] = 1.0
    x = torch.rand(1, 16, 32) + 0.1
    y, _ = layer(x)
    capacity = math.ceil(0.5 * 16 * 1 / 4)
    assert capacity == 2
    # position priority: the first `capacity` tokens keep their slot, the rest pass through as zero.
    assert y[0, :capacity].abs().sum(-1).gt(0).all()
    torch.testing.assert_close(y[0, capacity:], torch.zeros(16 - capacity, 32))


def test_dropped_tokens_equal_residual_path_in_a_block():
    from harness.models.transformer import Block

    block = Block(MODEL, MoEConfig(num_experts=4, top_k=1, capacity_factor=0.25), layer=0)
    with torch.no_grad():  # the FFN sees a constant input that the router sends to expert 0
        block.norm2.weight.zero_()
        block.norm2.bias.fill_(1.0)
        block.ffn.router.weight.zero_()
        block.ffn.router.weight[0] = 1.0
    x = torch.randn(1, 16, 32)
    after_attn = x + block.attn(block.norm1(x))
    out, _ = block(x)
    # capacity ceil(0.25*16/4) = 1: only token 0 reaches expert 0, the others keep the residual only.
    torch.testing.assert_close(out[0, 1:], after_attn[0, 1:])
    assert not torch.allclose(out[0, 0], after_attn[0, 0])


@pytest.mark.parametrize("router", ["topk_softmax", "switch", "noisy_topk", "expert_choice", "sigmoid_bias"])
def test_gradients_reach_the_router(router):
    top_k = 1 if router == "switch" else 2
    layer = _layer(num_experts=4, top_k=top_k, router=router, aux_loss_coef=0.0)
    layer.train()
    y, _ = layer(torch.randn(2, 8, 32))
    y.pow(2).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_switch_aux_loss_is_alpha_at_perfect_balance_and_flows_to_router():
    layer = _layer(num_experts=4, top_k=2, aux_loss_coef=0.01, routing_mode="balanced")
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform probabilities
    _, aux = layer(torch.randn(32, 32))
    torch.testing.assert_close(aux, torch.tensor(0.01))
    layer2 = _layer(num_experts=4, top_k=2, aux_loss_coef=0.01)
    _, aux2 = layer2(torch.randn(32, 32))
    aux2.backward()
    assert layer2.router.weight.grad.abs().sum() > 0
