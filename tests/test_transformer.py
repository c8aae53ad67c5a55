"""The decoder-only transformer: shapes, causality, dense vs MoE layer placement, parameter convention."""
import pytest
import torch

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.models import build_model
from harness.models.dense import FeedForward
from harness.models.moe.layer import MoELayer

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(moe=None, **model):
    return Case(kind="moe" if moe else "dense", model=ModelConfig(**model), moe=moe, run=RunSettings())


def test_dense_forward_shapes_and_zero_aux():
    model = build_model(_case(n_layers=2, seq_len=16))
    logits, aux = model(torch.randint(0, 256, (3, 16)))
    assert logits.shape == (3, 16, 256)
    assert aux.dim() == 0 and aux.item() == 0.0


@pytest.mark.parametrize("moe", [None, MoEConfig(num_experts=4, top_k=1, capacity_factor=None)])
def test_causal_future_tokens_do_not_change_past_logits(moe):
    torch.manual_seed(0)
    model = build_model(_case(moe, n_layers=2, seq_len=16)).eval()
    a = torch.randint(0, 256, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 256
    la, _ = model(a)
    lb, _ = model(b)
    torch.testing.assert_close(la[0, :10], lb[0, :10])
    assert not torch.allclose(la[0, 10:], lb[0, 10:])


def test_moe_layer_placement_every_and_first_dense():
    moe = MoEConfig(num_experts=4, top_k=1, every=2, first_dense=1)
    model = build_model(_case(moe, n_layers=5))
    kinds = [type(b.ffn) for b in model.blocks]
    assert kinds == [FeedForward, MoELayer, FeedForward, MoELayer, FeedForward]


def test_gqa_rmsnorm_swiglu_untied_head_dim():
    cfg = dict(n_heads=4, n_kv_heads=2, head_dim=24, norm="rmsnorm", activation="swiglu", tie_embeddings=False)
    model = build_model(_case(None, **cfg))
    attn = model.blocks[0].attn
    assert attn.q.weight.shape == (96, 64) and attn.k.weight.shape == (48, 64)
    assert model.lm_head.weight is not model.tok_emb.weight
    logits, _ = model(torch.randint(0, 256, (2, 8)))
    assert logits.shape == (2, 8, 256)


def _expected_params(m: ModelConfig, moe: MoEConfig | None) -> int:
    """The documented convention, written out independently of the modules."""
    d, hs = m.d_model, m.head_size
    c = 3 if m.activation == "swiglu" else 2
    norm = d if m.norm == "rmsnorm" else 2 * d
    attn = d * m.n_heads * hs * 2 + 2 * d * m.kv_heads * hs
    positions = m.seq_len * d if m.positional == "learned" else 0
    total = m.vocab_size * d + positions + norm + (0 if m.tie_embeddings else m.vocab_size * d)
    for i in range(m.n_layers):
        total += 2 * norm + attn
        if moe is not None and moe.is_moe_layer(i):
            router = moe.experts * d * (2 if moe.router == "noisy_topk" else 1)
            total += router + moe.experts * c * d * moe.expert_width(m)
            total += c * d * moe.num_shared_experts * moe.shared_width(m)
            total += d if moe.shared_gate and moe.num_shared_experts else 0
        else:
            total += c * d * m.d_ff
    return total


@pytest.mark.parametrize(
    "model_kw,moe",
    [
        ({}, None),
        (dict(activation="swiglu", norm="rmsnorm", tie_embeddings=False, n_kv_heads=2), None),
        ({}, MoEConfig(num_experts=4, top_k=2, every=2)),
        (dict(activation="swiglu", head_dim=8), MoEConfig(num_experts=4, top_k=1, granularity=2,
                                                          num_shared_experts=2, d_shared=32, router="noisy_topk")),
        ({}, MoEConfig(router="sigmoid_bias")),
        (dict(positional="rope", norm="rmsnorm"), MoEConfig(num_shared_experts=1, shared_gate=True)),
        (dict(positional="none"), None),
    ],
)
def test_parameter_count_matches_documented_convention(model_kw, moe):
    case = _case(moe, n_layers=3, **model_kw)
    model = build_model(case)
    assert sum(p.numel() for p in model.parameters()) == _expected_params(case.model, moe)


def test_training_step_reduces_loss_and_bf16_forward_runs():
    torch.manual_seed(0)
    model = build_model(_case(MoEConfig(num_experts=4, top_k=2, impl="grouped"), n_layers=2, seq_len=16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 256, (4, 16))
    losses = []
    for _ in range(10):
        logits, aux = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_optimizer_step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    logits, aux = model.to(torch.bfloat16)(tokens)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("positional", ["learned", "rope", "none"])
def test_positional_variants(positional):
    torch.manual_seed(0)
    model = build_model(_case(None, n_layers=1, seq_len=16, positional=positional)).eval()
    assert (model.pos_emb is not None) == (positional == "learned")
    assert (model.blocks[0].attn.rotary is not None) == (positional == "rope")
    tokens = torch.randint(0, 256, (1, 16))
    tokens[0, 5] = tokens[0, 9]
    logits, _ = model(tokens)
    # Without positional information, the same token with the same causal prefix *set* is not
    # distinguishable by order; with it, swapping two earlier tokens changes the output.
    swapped = tokens.clone()
    swapped[0, [1, 2]] = tokens[0, [2, 1]]
    changed = not torch.allclose(model(swapped)[0][0, -1], logits[0, -1], atol=1e-5)
    assert changed == (positional != "none")


def test_rope_rotation_is_relative():
    from harness.models.attention import Rotary

    rot = Rotary(8, 32)
    q, k = torch.randn(8), torch.randn(8)

    def at(v, pos):
        x = torch.zeros(1, 1, 32, 8)
        x[0, 0, pos] = v
        return rot(x)[0, 0, pos]

    torch.testing.assert_close(at(q, 5) @ at(k, 3), at(q, 12) @ at(k, 10))


def test_shared_gate_scales_shared_experts():
    from harness.models.moe.layer import MoELayer

    torch.manual_seed(0)
    moe = MoEConfig(num_experts=2, top_k=1, num_shared_experts=1, shared_gate=True)
    layer = MoELayer(ModelConfig(), moe)
    x = torch.randn(5, 64)
    y, _ = layer(x)
    ungated = MoELayer(ModelConfig(), moe.model_copy(update={"shared_gate": False}))
    ungated.load_state_dict({k: v for k, v in layer.state_dict().items() if "shared_gate" not in k})
    y0, _ = ungated(x)
    gate = torch.sigmoid(x @ layer.shared_gate.weight.t())
    torch.testing.assert_close(y, y0 - layer.shared(x) + gate * layer.shared(x))
