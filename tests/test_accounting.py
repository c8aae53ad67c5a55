"""Analytic accounting: hand-checked counts, internal consistency, and matched baselines on random configs."""
from __future__ import annotations

import random

import pytest

from harness import accounting
from harness.config import ModelConfig, MoEConfig


def random_config(rng: random.Random) -> tuple[ModelConfig, MoEConfig]:
    n_heads = rng.choice([1, 2, 4, 8])
    head_dim = rng.choice([None, 8, 16])
    d_model = n_heads * rng.choice([4, 8, 16]) if head_dim is None else rng.choice([16, 24, 64])
    model = ModelConfig(
        vocab_size=rng.choice([64, 256, 1000]),
        d_model=d_model,
        n_layers=rng.randint(1, 6),
        n_heads=n_heads,
        n_kv_heads=rng.choice([d for d in (1, 2, n_heads) if n_heads % d == 0]),
        head_dim=head_dim,
        d_ff=rng.choice([16, 64, 4 * d_model]),
        seq_len=rng.choice([8, 32, 128]),
        activation=rng.choice(["gelu", "swiglu"]),
        norm=rng.choice(["layernorm", "rmsnorm"]),
        tie_embeddings=rng.random() < 0.5,
        positional=rng.choice(["learned", "rope", "none"]),
    )
    num_experts = rng.choice([2, 4, 8, 16])
    moe = MoEConfig(
        num_experts=num_experts,
        top_k=rng.randint(1, min(4, num_experts)),
        d_expert=rng.choice([None, 32, 96]),
        every=rng.choice([1, 1, 2, 3]),
        first_dense=rng.choice([0, 0, 1]),
        num_shared_experts=rng.choice([0, 0, 1, 2]),
        d_shared=rng.choice([None, 48]),
        shared_gate=rng.random() < 0.3,
        granularity=rng.choice([1, 1, 2, 4]),
        capacity_factor=rng.choice([None, 1.0, 1.25]),
    )
    return model, moe


RANDOM_CONFIGS = [random_config(random.Random(seed)) for seed in range(200)]


def test_hand_counted_gelu_moe():
    """d=64, 2 layers, MHA 4 heads, GELU, LayerNorm, tied, learned positions; 8 experts of 256, top-2."""
    model = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, seq_len=64)
    moe = MoEConfig(num_experts=8, top_k=2)
    p = accounting.param_counts(model, moe)
    embedding = 256 * 64 + 64 * 64
    per_layer_shared = 4 * 64 * 64 + 2 * (2 * 64) + 64 * 8  # attention, two layernorms, router
    expert = 2 * 64 * 256
    final_norm = 2 * 64
    assert p.total == embedding + 2 * (per_layer_shared + 8 * expert) + final_norm
    assert p.active == embedding + 2 * (per_layer_shared + 2 * expert) + final_norm
    f = accounting.forward_flops(model, moe)
    assert f.attn_proj == 2 * 2 * 4 * 64 * 64
    assert f.attn_scores == 2 * 4 * 64 * 64  # layers * 4 * seq_len * n_heads * head_dim
    assert f.router == 2 * 2 * 64 * 8
    assert f.routed_experts == 2 * 2 * 2 * expert
    assert f.lm_head == 2 * 256 * 64
    assert f.dense_ffn == 0 and f.shared_experts == 0


def test_hand_counted_swiglu_gqa_untied_rope_with_dense_first_layer_and_shared_gate():
    model = ModelConfig(vocab_size=100, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
                        d_ff=80, activation="swiglu", norm="rmsnorm", tie_embeddings=False, positional="rope")
    moe = MoEConfig(num_experts=4, top_k=1, d_expert=40, first_dense=1, num_shared_experts=1, d_shared=24,
                    shared_gate=True)
    p = accounting.param_counts(model, moe)
    attention = 32 * 64 + 2 * 32 * 32 + 64 * 32
    norms = (2 * 3 + 1) * 32
    dense = 3 * 32 * 80
    moe_layer = 32 * 4 + 4 * 3 * 32 * 40 + 3 * 32 * 24 + 32  # router, experts, shared, shared gate
    assert p.total == 2 * 100 * 32 + 3 * attention + norms + dense + 2 * moe_layer
    assert p.active == p.total - 2 * 3 * (3 * 32 * 40)
    f = accounting.forward_flops(model, moe)
    assert f.dense_ffn == 2 * dense
    assert f.shared_experts == 2 * 2 * (3 * 32 * 24 + 32)
    assert f.attn_scores == 3 * 4 * model.seq_len * 64


def test_one_expert_top1_moe_is_dense_plus_router():
    model = ModelConfig(activation="swiglu", n_layers=3)
    moe = MoEConfig(num_experts=1, top_k=1)
    moe_flops = accounting.forward_flops(model, moe)
    dense_flops = accounting.forward_flops(model, None)
    assert moe_flops.total - dense_flops.total == pytest.approx(moe_flops.router)
    assert moe_flops.router == 3 * 2 * model.d_model
    assert accounting.param_counts(model, moe).total - accounting.param_counts(model).total == 3 * model.d_model


def test_fine_grained_split_keeps_flops_and_params():
    model = ModelConfig(d_ff=256)
    coarse = MoEConfig(num_experts=8, top_k=2)
    fine = MoEConfig(num_experts=8, top_k=2, granularity=4)
    fc, ff = accounting.forward_flops(model, coarse), accounting.forward_flops(model, fine)
    assert fc.routed_experts == ff.routed_experts
    assert ff.router == 4 * fc.router
    pc, pf = accounting.param_counts(model, coarse), accounting.param_counts(model, fine)
    assert pc.experts == pf.experts and pc.experts_active == pf.experts_active


def test_moe_every_other_layer():
    model = ModelConfig(n_layers=4)
    moe = MoEConfig(every=2)
    f = accounting.forward_flops(model, moe)
    assert f.dense_ffn == 2 * 2 * (2 * model.d_model * model.d_ff)
    assert f.router == 2 * 2 * model.d_model * moe.num_experts


@pytest.mark.parametrize("model,moe", RANDOM_CONFIGS)
def test_forward_flops_are_twice_active_matmul_params(model, moe):
    """Every active non-embedding weight is used once per token in a matmul (2 FLOPs), plus the scores."""
    p = accounting.param_counts(model, moe)
    f = accounting.forward_flops(model, moe)
    matmul_params = p.active - p.embedding - p.positional - p.norms + (p.embedding if model.tie_embeddings else 0)
    assert f.total - f.attn_scores == pytest.approx(2 * matmul_params)
    assert accounting.train_flops_per_token(model, moe) == pytest.approx(3 * f.total)


@pytest.mark.parametrize("model,moe", RANDOM_CONFIGS)
def test_matched_dense_within_one_percent(model, moe):
    flop_peer = accounting.matched_dense(model, moe, "flop_matched")
    param_peer = accounting.matched_dense(model, moe, "param_matched")
    assert accounting.match_error(accounting.forward_flops(flop_peer).total,
                                  accounting.forward_flops(model, moe).total) < 0.01
    assert accounting.match_error(accounting.param_counts(param_peer).total,
                                  accounting.param_counts(model, moe).total) < 0.01
    for peer in (flop_peer, param_peer):
        assert peer.model_copy(update={"d_ff": model.d_ff}) == model


def test_matched_dense_is_the_closest_integer_width():
    model = ModelConfig(d_model=64, d_ff=256, activation="swiglu", n_layers=4)
    moe = MoEConfig(num_experts=8, top_k=2, num_shared_experts=1, d_shared=100)
    target = accounting.forward_flops(model, moe).total
    peer = accounting.matched_dense(model, moe, "flop_matched")

    def err(d_ff: int) -> float:
        return abs(accounting.forward_flops(peer.model_copy(update={"d_ff": d_ff})).total - target)

    assert err(peer.d_ff) <= min(err(peer.d_ff - 1), err(peer.d_ff + 1))
    # k=2 experts of 256 plus a shared expert of 100 plus the router (2*d*E / (3*2*d) = E/3 columns)
    assert peer.d_ff == round(2 * 256 + 100 + 8 / 3)


def test_matched_dense_rejects_unknown_rule():
    with pytest.raises(ValueError, match="unknown baseline rule"):
        accounting.matched_dense(ModelConfig(), MoEConfig(), "time_matched")  # type: ignore[arg-type]


def test_summary_columns():
    model, moe = ModelConfig(), MoEConfig()
    s = accounting.summary(model, moe)
    assert set(s) == {"params_total", "params_active", "params_active_non_embedding", "flops_per_token",
                      "train_flops_per_token"}
    assert s["params_total"] > s["params_active"]
    assert s["train_flops_per_token"] == 3 * s["flops_per_token"]


def test_match_error():
    assert accounting.match_error(101.0, 100.0) == pytest.approx(0.01)
    assert accounting.match_error(99.0, 100.0) == pytest.approx(0.01)
