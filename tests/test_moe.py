"""MoE layer: dense equivalence, capacity and dropping, gradients to the router."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.metrics import routing as routing_stats
from harness.models import build_model
from harness.models.dense import FeedForward
from harness.models.moe.dispatch import IMPLS
from harness.models.moe.layer import MoELayer
from harness.models.moe.router import SigmoidBiasRouter, round_robin, zipf_choice

MODEL = ModelConfig(d_model=32, d_ff=64)


pytestmark = pytest.mark.usefixtures("one_thread")


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
        dense.w_in.weight.copy_(layer.experts.w_in[0])
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
        block.norm2.norm.weight.zero_()  # an MoE block's norm is a float32 island around a LayerNorm
        block.norm2.norm.bias.fill_(1.0)
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


# ---------------------------------------------------------------- every impl matches the loop reference

ROUTERS = ["topk_softmax", "switch", "noisy_topk", "expert_choice", "sigmoid_bias"]


def _run(layer, x, seed):
    """Forward + backward with a fixed seed (noise, jitter); returns output, losses and all grads."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    y, aux = layer(x)
    target = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
    ((y * target).sum() + aux).backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in layer.named_parameters()}
    return y.detach(), aux.detach(), dict(layer.last_losses), grads, x.grad


def _assert_impls_match(moe: MoEConfig, model: ModelConfig, tokens: int, train: bool, seed: int = 0):
    torch.manual_seed(seed)
    reference = MoELayer(model, moe.model_copy(update={"impl": "loop"})).train(train)
    x = torch.randn(tokens, model.d_model)
    expected = _run(reference, x, seed)
    tol = dict(atol=2e-5, rtol=1e-4)
    for name in ("grouped", "padded"):
        other = copy.deepcopy(reference)
        other.impl = IMPLS[name]
        with torch.no_grad():
            torch.manual_seed(seed)
            torch.testing.assert_close(other(x)[0], expected[0], **tol, msg=f"{name} no-grad output")
        got = _run(other, x, seed)
        torch.testing.assert_close(got[0], expected[0], **tol, msg=f"{name} output")
        torch.testing.assert_close(got[1], expected[1], **tol, msg=f"{name} aux")
        for loss in expected[2]:
            torch.testing.assert_close(got[2][loss], expected[2][loss], **tol, msg=f"{name} {loss}")
        for p in expected[3]:
            torch.testing.assert_close(got[3][p], expected[3][p], **tol, msg=f"{name} grad {p}")
        torch.testing.assert_close(got[4], expected[4], **tol, msg=f"{name} input grad")


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
@pytest.mark.parametrize("activation,shared,granularity", [("gelu", 0, 1), ("swiglu", 1, 2)])
def test_impls_match_loop(router, capacity_factor, activation, shared, granularity):
    moe = MoEConfig(num_experts=4, top_k=1 if router == "switch" else 2, capacity_factor=capacity_factor,
                    router=router, num_shared_experts=shared, granularity=1 if router == "switch" else granularity,
                    z_loss_coef=1e-3, importance_loss_coef=0.1, jitter_eps=0.05)
    _assert_impls_match(moe, ModelConfig(d_model=16, d_ff=32, activation=activation), tokens=40, train=True)


@settings(max_examples=25, deadline=None)
@given(
    router=st.sampled_from(["topk_softmax", "noisy_topk", "expert_choice", "sigmoid_bias"]),
    num_experts=st.integers(1, 9),
    top_k=st.integers(1, 3),
    capacity_factor=st.sampled_from([None, 0.25, 1.0, 1.5, 4.0]),
    renormalize=st.booleans(),
    mode=st.sampled_from(["learned", "balanced", "skewed"]),
    tokens=st.integers(1, 50),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_impls_match_loop_property(router, num_experts, top_k, capacity_factor, renormalize, mode, tokens,
                                   train, seed):
    top_k = min(top_k, num_experts)
    if router == "expert_choice":
        mode = "learned"
    moe = MoEConfig(num_experts=num_experts, top_k=top_k, capacity_factor=capacity_factor, router=router,
                    renormalize=renormalize and top_k > 1,  # renormalised top-1 is refused at load
                    routing_mode=mode, z_loss_coef=1e-3, importance_loss_coef=0.1)
    _assert_impls_match(moe, ModelConfig(d_model=8, d_ff=12), tokens=tokens, train=train, seed=seed)


# ---------------------------------------------------------------- capacity and routing modes


@pytest.mark.parametrize("impl", ["loop", "grouped", "padded"])
def test_capacity_drops_exactly_the_overflow(impl):
    layer = _layer(num_experts=4, top_k=2, capacity_factor=0.8, impl=impl)
    x = torch.randn(50, 32)
    routing = layer.router(x)
    routed = torch.bincount(routing.expert, minlength=4)
    capacity = math.ceil(0.8 * 50 * 2 / 4)
    expected_dropped = (routed - capacity).clamp(min=0).sum().item()
    assert expected_dropped > 0
    routing_stats.reset(layer)
    layer(x)
    case, rows = routing_stats.collect(layer)
    assert case["dropped_fraction"] == pytest.approx(expected_dropped / 100)
    assert rows[0]["tokens_per_expert"] == routed.tolist()
    assert case["realized_capacity_factor"] == pytest.approx(capacity / (50 * 2 / 4))


def test_dropping_keeps_first_choices_before_second_choices():
    layer = _layer(num_experts=2, top_k=2, capacity_factor=0.5, renormalize=False)
    x = torch.randn(8, 32)
    routing = layer.router(x)
    from harness.models.moe.dispatch import make_plan

    plan = make_plan(routing, torch.bincount(routing.expert, minlength=2), capacity=4)
    first_choice = routing.expert[:8]  # slot-major: first 8 assignments are first choices
    for e in range(2):
        kept = set(plan.token[plan.expert == e].tolist())
        firsts = [t for t in range(8) if first_choice[t] == e]
        assert set(firsts[:4]) <= kept


def test_balanced_mode_gives_equal_loads():
    layer = _layer(num_experts=8, top_k=2, routing_mode="balanced", capacity_factor=None)
    routing_stats.reset(layer)
    layer(torch.randn(64, 32))
    case, rows = routing_stats.collect(layer)
    assert rows[0]["tokens_per_expert"] == [16] * 8
    assert case["load_cv"] == 0 and case["max_mean_load"] == 1 and case["realized_capacity_factor"] == 1
    idx = round_robin(10, 3, 4, torch.device("cpu"))
    assert all(len(set(r)) == 3 for r in idx.tolist())


def test_skewed_mode_follows_zipf():
    idx = zipf_choice(20000, 1, 8, 1.2, torch.device("cpu"))
    share = torch.bincount(idx.view(-1), minlength=8).float() / 20000
    zipf = 1 / torch.arange(1, 9).float() ** 1.2
    torch.testing.assert_close(share, zipf / zipf.sum(), atol=0.01, rtol=0)
    idx2 = zipf_choice(1000, 3, 8, 1.2, torch.device("cpu"))
    assert all(len(set(r)) == 3 for r in idx2.tolist())
    loads = torch.bincount(idx2.view(-1), minlength=8)
    assert loads[0] > loads[3] > loads[7]
    layer = _layer(num_experts=8, top_k=1, routing_mode="skewed", skew_exponent=1.2)
    routing_stats.reset(layer)
    layer(torch.randn(256, 32))
    assert routing_stats.collect(layer)[0]["max_mean_load"] > 2


# ---------------------------------------------------------------- routers


def test_expert_choice_is_balanced_and_flagged_non_causal():
    layer = _layer(num_experts=4, top_k=2, router="expert_choice", capacity_factor=1.0)
    routing_stats.reset(layer)
    x = torch.randn(40, 32)
    routing = layer.router(x)
    assert torch.bincount(routing.expert).tolist() == [20] * 4
    layer(x)
    case, rows = routing_stats.collect(layer)
    assert case["causal"] is False and rows[0]["causal"] is False
    unpicked = 40 - len(set(routing.token.tolist()))
    assert case["dropped_fraction"] == pytest.approx(unpicked / 40)
    with pytest.raises(ValueError, match="learned"):
        _layer(router="expert_choice", routing_mode="balanced")


def test_switch_router_is_top1_only():
    with pytest.raises(ValueError, match="top-1"):
        _layer(num_experts=4, top_k=2, router="switch")


@pytest.mark.parametrize("renormalize", [False, True])
def test_topk_softmax_weights_renormalised_only_on_request(renormalize):
    layer = _layer(num_experts=6, top_k=2, renormalize=renormalize)
    routing = layer.router(torch.randn(20, 32))
    per_token = torch.zeros(20).index_add(0, routing.token, routing.weight)
    if renormalize:
        torch.testing.assert_close(per_token, torch.ones(20))
    else:
        top2 = routing.probs.topk(2).values.sum(-1)
        torch.testing.assert_close(per_token, top2)
        assert (per_token < 1).all()


def test_noise_and_jitter_only_in_training():
    for router, extra in [("noisy_topk", {}), ("topk_softmax", {"jitter_eps": 0.3})]:
        layer = _layer(num_experts=8, top_k=2, router=router, **extra)
        with torch.no_grad():
            if router == "noisy_topk":
                layer.router.noise_weight.fill_(0.5)
        x = torch.randn(64, 32)
        layer.eval()
        torch.manual_seed(1)
        a = layer(x)[0]
        torch.manual_seed(2)
        b = layer(x)[0]
        torch.testing.assert_close(a, b)
        layer.train()
        torch.manual_seed(1)
        c = layer(x)[0]
        torch.manual_seed(2)
        d = layer(x)[0]
        assert not torch.allclose(c, d), router


def test_noisy_router_smooth_load_gets_gradient():
    layer = _layer(num_experts=4, top_k=1, router="noisy_topk", importance_loss_coef=1.0, aux_loss_coef=0.0)
    layer.train()
    _, aux = layer(torch.randn(32, 32))
    aux.backward()
    assert layer.router.noise_weight.grad.abs().sum() > 0


def test_sigmoid_bias_update_direction_and_selection_only():
    layer = _layer(num_experts=4, top_k=1, router="sigmoid_bias", bias_update_rate=0.01)
    model = torch.nn.Module()
    model.layer = layer
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[3, 0] = 5.0
    x = torch.randn(64, 32)
    x[:, 0] = x[:, 0].abs() + 0.5  # expert 3 overloaded
    layer.train()
    layer(x)
    load = layer.router.pending_load.clone()
    assert load[3] == 64
    layer.router.update_bias()
    bias = layer.router.expert_bias
    assert bias[3] == pytest.approx(-0.01) and torch.allclose(bias[:3], torch.full((3,), 0.01))
    assert layer.router.pending_load.sum() == 0
    with torch.no_grad():  # a large bias moves selection, but weights stay the unbiased sigmoid scores
        layer.router.expert_bias.copy_(torch.tensor([10.0, 0, 0, 0]))
    routing = layer.router(x)
    assert (routing.expert == 0).all()
    torch.testing.assert_close(routing.weight, routing.logits[:, 0].sigmoid())


def test_transformer_on_optimizer_step_updates_bias_and_bias_stays_fp32():
    moe = MoEConfig(num_experts=4, top_k=1, router="sigmoid_bias")
    model = build_model(Case(kind="moe", model=ModelConfig(n_layers=1, seq_len=8), moe=moe, run=RunSettings()))
    model.train()
    model(torch.randint(0, 256, (2, 8)))
    model.on_optimizer_step()
    router = model.blocks[0].ffn.router
    assert isinstance(router, SigmoidBiasRouter)
    assert router.expert_bias.abs().sum() > 0
    model.to(torch.bfloat16)
    assert router.expert_bias.dtype == router.weight.dtype == torch.float32  # the router never rounds
    assert model.blocks[0].ffn.experts.w_in.dtype == torch.bfloat16


@pytest.mark.parametrize("router", ROUTERS)
def test_router_math_in_fp32_under_bf16(router):
    layer = _layer(num_experts=4, top_k=1, router=router).to(torch.bfloat16)
    x = torch.randn(16, 32, dtype=torch.bfloat16)
    routing = layer.router(x)
    assert routing.logits.dtype == routing.probs.dtype == routing.weight.dtype == torch.float32
    torch.testing.assert_close(routing.logits, x.float() @ layer.router.weight.float().t())
    y, aux = layer(x)
    assert y.dtype == torch.bfloat16 and aux.dtype == torch.float32


# ---------------------------------------------------------------- losses, statistics, granularity


def test_aux_loss_values():
    layer = _layer(num_experts=4, top_k=2, aux_loss_coef=0.5, z_loss_coef=0.1, importance_loss_coef=0.2)
    x = torch.randn(30, 32)
    _, aux = layer(x)
    routing = layer.router(x)
    routed = torch.bincount(routing.expert, minlength=4).float()
    lb = 4 * (routed / 60 * routing.probs.mean(0)).sum()
    z = torch.logsumexp(routing.logits, -1).pow(2).mean()
    importance = torch.zeros(4).index_add(0, routing.expert, routing.weight)
    cv2 = lambda v: v.var(unbiased=False) / v.mean() ** 2  # noqa: E731
    imp = cv2(importance) + cv2(routed)
    torch.testing.assert_close(layer.last_losses["aux_loss"], lb)
    torch.testing.assert_close(layer.last_losses["z_loss"], z)
    torch.testing.assert_close(layer.last_losses["importance_loss"], imp)
    torch.testing.assert_close(aux, 0.5 * lb + 0.1 * z + 0.2 * imp)


def test_collect_columns_dense_and_reset():
    cfg = ModelConfig(n_layers=3, seq_len=8)
    dense = build_model(Case(kind="dense", model=cfg, run=RunSettings()))
    dense(torch.randint(0, 256, (2, 8)))
    assert routing_stats.collect(dense) == ({}, [])
    assert routing_stats.last_losses(dense) == {}
    moe = MoEConfig(num_experts=4, top_k=2, first_dense=1)
    model = build_model(Case(kind="moe", model=cfg, moe=moe, run=RunSettings()))
    model(torch.randint(0, 256, (2, 8)))
    case, rows = routing_stats.collect(model)
    assert list(case) == ["dropped_fraction", "load_cv", "max_mean_load", "experts_unused", "router_entropy",
                          "realized_capacity_factor", "aux_loss", "z_loss", "importance_loss", "causal"]
    assert [r["layer"] for r in rows] == [1, 2]
    assert all(sum(r["tokens_per_expert"]) == 32 for r in rows)
    assert 0 < case["router_entropy"] <= math.log(4) + 1e-6
    assert set(routing_stats.last_losses(model)) == {"aux_loss", "z_loss", "importance_loss"}
    model(torch.randint(0, 256, (2, 8)))
    assert sum(routing_stats.collect(model)[1][0]["tokens_per_expert"]) == 64
    routing_stats.reset(model)
    assert routing_stats.collect(model) == ({}, [])


def test_experts_unused_counted():
    layer = _layer(num_experts=4, top_k=1, capacity_factor=None)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[1, 0] = 10.0
    x = torch.randn(16, 32)
    x[:, 0] = 1.0
    layer(x)
    case, rows = routing_stats.collect(layer)
    assert rows[0]["tokens_per_expert"] == [0, 16, 0, 0]
    assert case["experts_unused"] == 3 and case["max_mean_load"] == 4
    assert case["realized_capacity_factor"] == 4


def test_fine_grained_granularity_shapes():
    layer = _layer(num_experts=4, top_k=2, granularity=4, num_shared_experts=2)
    assert layer.num_experts == 16 and layer.k == 8
    assert layer.experts.w_in.shape == (16, 16, 32) and layer.experts.w_out.shape == (16, 16, 32)
    assert layer.shared.w_in.weight.shape == (2 * 64, 32)
    routing = layer.router(torch.randn(5, 32))
    assert routing.expert.numel() == 5 * 8


def test_native_grouped_mm_path_matches_per_expert_path():
    """The `F.grouped_mm` branch (CUDA bf16 in production) checked where this torch runs it on CPU,
    with an empty expert group, against the per-expert path and a plain reference."""
    import torch.nn.functional as F

    from harness.models.dense import activate
    from harness.models.moe.grouped import grouped_ffn

    if not hasattr(F, "grouped_mm"):
        pytest.skip("torch without F.grouped_mm")
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 4, 3])
    token = torch.tensor([0, 2, 5, 1, 2, 3, 4, 0, 5, 1])
    expert = torch.repeat_interleave(torch.arange(4), counts)
    x = torch.randn(6, 16, requires_grad=True)
    w_in = torch.randn(4, 2 * 8, 16, requires_grad=True)
    w_out = torch.randn(4, 8, 16, requires_grad=True)
    weight = torch.rand(10, requires_grad=True)
    act = lambda h: activate(h, "swiglu")  # noqa: E731
    inputs = (x, w_in, w_out, weight)

    def run(native):
        out = grouped_ffn(x, w_in, w_out, act, token, weight, counts, lambda: counts.tolist(), native=native)
        return out, torch.autograd.grad((out * g).sum(), inputs)

    g = torch.randn(6, 16)
    reference = torch.zeros(6, 16).index_add(
        0, token, torch.stack([act(x[t] @ w_in[e].t()) @ w_out[e] for t, e in zip(token, expert)])
        * weight.unsqueeze(1))
    expected = (reference, torch.autograd.grad((reference * g).sum(), inputs))
    with torch.no_grad():  # the inference path (no autograd) computes the same function
        no_grad = grouped_ffn(x, w_in, w_out, act, token, weight, counts, lambda: counts.tolist(), native=False)
    torch.testing.assert_close(no_grad, reference.detach())
    for native in (False, True):
        try:
            got = run(native)
        except (RuntimeError, NotImplementedError) as exc:
            assert native, exc
            pytest.skip(f"F.grouped_mm unavailable on CPU here: {exc}")
        torch.testing.assert_close(got[0], expected[0])
        for a, b in zip(got[1], expected[1]):
            torch.testing.assert_close(a, b)


def test_grouped_mm_alignment_rule():
    from harness.models.moe.grouped import grouped_mm_aligned

    bf16 = dict(dtype=torch.bfloat16)
    assert grouped_mm_aligned(torch.zeros(5, 64, **bf16), torch.zeros(4, 128, 64, **bf16))
    assert not grouped_mm_aligned(torch.zeros(5, 20, **bf16), torch.zeros(4, 12, 20, **bf16))  # 40-byte rows
    assert grouped_mm_aligned(torch.zeros(5, 20), torch.zeros(4, 12, 20))  # fp32: 80 and 48 bytes


@pytest.mark.parametrize("capacity_factor, causal", [(None, True), (1.0, False)])
def test_capacity_limited_token_choice_is_flagged_non_causal(capacity_factor, causal):
    cfg = ModelConfig(n_layers=1, seq_len=8)
    moe = MoEConfig(num_experts=4, top_k=2, capacity_factor=capacity_factor)
    model = build_model(Case(kind="moe", model=cfg, moe=moe, run=RunSettings()))
    model(torch.randint(0, 256, (2, 8)))
    assert routing_stats.collect(model)[0]["causal"] is causal
