"""Router pitfalls: untrainable top-1 renormalisation, each router's published defaults, DeepSeek-V3's
sigmoid layer against its formula, how the MoE layers' losses combine, expert-choice accounting."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from harness import accounting
from harness.config import ROUTER_DEFAULTS, Case, ModelConfig, MoEConfig, RunSettings
from harness.models import build_model
from harness.models.moe.layer import MoELayer
from harness.plan import plan_rows

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ModelConfig(d_model=32, d_ff=64)


# ------------------------------------------------------------------ top-1 with renormalisation


@pytest.mark.parametrize("router,top_k,granularity", [("topk_softmax", 1, 1), ("sigmoid_bias", 1, 1), ("switch", 1, 1)])
def test_renormalised_top1_is_refused_with_the_reason(router, top_k, granularity):
    with pytest.raises(ValidationError, match="every gate weight 1, so the router gets no gradient"):
        MoEConfig(router=router, top_k=top_k, granularity=granularity, renormalize=True)


def test_renormalised_top1_really_kills_the_router_gradient():
    """Why it is refused: with one expert the renormalised weight is p/p = 1 for every token."""
    torch.manual_seed(0)
    layer = MoELayer(MODEL, MoEConfig(num_experts=4, top_k=2, aux_loss_coef=0.0, renormalize=True))
    layer.router.k = 1  # what the config now refuses
    y, _ = layer(torch.randn(64, 32))
    y.square().sum().backward()
    assert layer.router.weight.grad.abs().max() < 1e-5


def test_renormalised_top1_refused_in_plan_and_sweeps_can_zip_it_off():
    from harness.suite import SuiteError

    with pytest.raises(SuiteError, match="renormalize"):
        plan_rows("mixtral-8x7b", ("moe.top_k=1",))
    rows = plan_rows("mixtral-8x7b", ("moe.top_k=1", "moe.renormalize=false"))
    assert rows[0]["top_k"] == 1
    # fine-grained top-1 x 2 is two experts per token: renormalising them is fine
    assert MoEConfig(top_k=1, granularity=2, renormalize=True).k == 2


def test_top1_default_never_renormalises_even_for_sigmoid_bias():
    assert MoEConfig(router="sigmoid_bias", top_k=1).setting("renormalize") is False
    assert MoEConfig(router="sigmoid_bias", top_k=2).setting("renormalize") is True


# ------------------------------------------------------------------ published defaults per router


def test_each_router_gets_its_published_defaults():
    table = {name: {key: MoEConfig(router=name, top_k=1 if name == "switch" else 2).setting(key)
                    for key in ("renormalize", "aux_loss_coef", "importance_loss_coef")}
             for name in ROUTER_DEFAULTS}
    assert table["sigmoid_bias"] == {"renormalize": True, "aux_loss_coef": 0.0, "importance_loss_coef": 0.0}
    assert table["topk_softmax"] == {"renormalize": False, "aux_loss_coef": 0.01, "importance_loss_coef": 0.0}
    assert table["noisy_topk"] == {"renormalize": False, "aux_loss_coef": 0.0, "importance_loss_coef": 0.1}
    assert table["expert_choice"]["aux_loss_coef"] == 0.0
    # an explicit value always wins
    assert MoEConfig(router="sigmoid_bias", aux_loss_coef=0.01, renormalize=False).setting("aux_loss_coef") == 0.01


def test_sigmoid_bias_layer_follows_the_deepseek_v3_formula():
    """y = sum over i in TopK(s + b) of g_i E_i(x), s = sigmoid(u x), g_i = s_i / sum_TopK s_j; the bias
    picks the experts but never weighs them; no auxiliary loss by default."""
    torch.manual_seed(0)
    layer = MoELayer(MODEL, MoEConfig(num_experts=8, top_k=3, router="sigmoid_bias", capacity_factor=None))
    layer.router.expert_bias.copy_(torch.linspace(-0.3, 0.3, 8))
    x = torch.randn(40, 32)
    y, aux = layer(x)
    s = torch.sigmoid(x @ layer.router.weight.t())
    chosen = (s + layer.router.expert_bias).topk(3, dim=-1).indices
    g = s.gather(1, chosen)
    g = g / g.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(3):
            expected[t] += g[t, j] * layer.experts.expert(x[t : t + 1], int(chosen[t, j]))[0]
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert aux.item() == 0.0


# ------------------------------------------------------------------ losses over layers


def _two_moe_layer_model(reduction: str):
    case = Case(kind="moe", model=ModelConfig(n_layers=2, seq_len=8, vocab_size=64),
                moe=MoEConfig(num_experts=4, top_k=2, aux_loss_coef=0.01, z_loss_coef=0.001, loss_reduction=reduction),
                run=RunSettings())
    torch.manual_seed(0)
    return build_model(case)


def test_loss_reduction_sums_or_averages_the_layers():
    tokens = torch.randint(0, 64, (2, 8))
    summed, averaged = (_two_moe_layer_model(r) for r in ("sum", "mean"))
    _, aux_sum = summed(tokens)
    _, aux_mean = averaged(tokens)
    per_layer = [0.01 * m.last_losses["aux_loss"] + 0.001 * m.last_losses["z_loss"] for m in summed.moe_layers()]
    torch.testing.assert_close(aux_sum, sum(per_layer))
    torch.testing.assert_close(aux_mean, sum(per_layer) / 2)


def test_olmoe_preset_averages_its_losses_over_layers_like_megablocks():
    from harness import presets

    moe = MoEConfig(**presets.resolve("olmoe-1b-7b")["moe"])
    assert moe.loss_reduction == "mean" and moe.setting("aux_loss_coef") == 0.01 and moe.z_loss_coef == 0.001


# ------------------------------------------------------------------ expert choice accounting


def test_expert_choice_active_is_clamped_to_every_expert():
    """cf x k > E: each expert takes all T tokens (the router clamps), so a token meets every expert once."""
    model = ModelConfig(n_layers=1, seq_len=8, vocab_size=64)
    moe = MoEConfig(num_experts=4, top_k=4, capacity_factor=2.0, router="expert_choice")
    counts = accounting.param_counts(model, moe)
    assert counts.active == counts.total
    from harness.metrics.flops import measured_forward_flops_per_token
    from harness.models.transformer import TransformerLM

    net = TransformerLM(model, moe).eval()
    measured = measured_forward_flops_per_token(net, torch.randint(0, 64, (2, 8)))
    assert measured == pytest.approx(accounting.forward_flops(model, moe).total, rel=1e-9)


# ------------------------------------------------------------------ routing in float32 whatever the dtype


ROUTERS = ["topk_softmax", "switch", "noisy_topk", "expert_choice", "sigmoid_bias"]


@pytest.mark.parametrize("router", ROUTERS)
def test_bfloat16_layer_routes_exactly_as_float32_on_the_same_input(router):
    """Same weights, same (float32) input: a bfloat16 layer must pick the same experts with the same
    weights; before, its router rounded weights and inputs to bfloat16 and 13-49 of 4,096 tokens moved."""
    import copy

    torch.manual_seed(0)
    model = ModelConfig(d_model=64, d_ff=64)
    layer = MoELayer(model, MoEConfig(num_experts=16, top_k=1 if router == "switch" else 2, router=router,
                                      capacity_factor=None)).eval()
    half = copy.deepcopy(layer).to(torch.bfloat16)
    assert half.router.weight.dtype == torch.float32 and half.experts.w_in.dtype == torch.bfloat16
    x = torch.randn(4096, 64)
    full, low = layer.router(x), half.router(x)
    assert torch.equal(full.expert, low.expert) and torch.equal(full.token, low.token)
    assert torch.equal(full.weight, low.weight)
    y32, _ = layer(x)
    y16, _ = half(x)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.02)


def test_moe_block_norm_feeds_the_router_in_float32():
    case = Case(kind="moe", model=ModelConfig(n_layers=1, seq_len=8, vocab_size=64, d_model=32),
                moe=MoEConfig(num_experts=4), run=RunSettings())
    net = build_model(case).to(torch.bfloat16)
    block = net.blocks[0]
    assert block.norm1.weight.dtype == torch.bfloat16  # the rest of the model is bfloat16
    x = torch.randn(2, 8, 32).to(torch.bfloat16)
    assert block.norm2(x).dtype == torch.float32
    logits, aux = net(torch.randint(0, 64, (2, 8)))
    assert logits.dtype == torch.bfloat16 and aux.dtype == torch.float32


# ------------------------------------------------------------------ defaults and case ids


def test_default_implementation_is_grouped_and_loop_stays_selectable():
    """`loop` is the correctness reference; a suite that names no impl measures the fast one."""
    assert MoEConfig().impl == "grouped"
    model = build_model(Case(kind="moe", model=MODEL, moe=MoEConfig(num_experts=4), run=RunSettings()), "cpu")
    assert {layer.impl_name for layer in model.modules() if isinstance(layer, MoELayer)} == {"grouped"}
    assert MoEConfig(impl="loop").impl == "loop"


@pytest.mark.parametrize("router,written", [
    ("topk_softmax", dict(aux_loss_coef=0.01, renormalize=False, importance_loss_coef=0.0)),
    ("sigmoid_bias", dict(aux_loss_coef=0.0, renormalize=True, importance_loss_coef=0.0)),
])
def test_a_null_router_setting_is_the_same_case_as_its_default_written_out(router, written):
    """Ids stored when these settings were plain numbers (0.01, false, 0.0) still match."""
    def case(**moe):
        return Case(kind="moe", model=MODEL, moe=MoEConfig(router=router, **moe), run=RunSettings())

    assert case().id == case(**written).id
    assert case().id != case(**{**written, "aux_loss_coef": 0.02}).id
    assert case().id != case(loss_reduction="mean").id
