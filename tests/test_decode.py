"""KV-cache decoding computes the same function as the full causal forward; the decode workload."""
import pytest
import torch

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.models.transformer import TransformerLM
from harness.workloads import make_workload


@pytest.mark.parametrize("positional", ["learned", "rope"])
@pytest.mark.parametrize("moe", [None, MoEConfig(num_experts=4, top_k=2, capacity_factor=None, impl="grouped"),
                                 MoEConfig(num_experts=3, top_k=1, capacity_factor=None, impl="loop")])
def test_incremental_decoding_matches_full_forward(positional, moe):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, seq_len=12, positional=positional)
    model = TransformerLM(cfg, moe).eval()
    tokens = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        caches = model.make_caches(3, "cpu", torch.float32)
        pieces = [model(tokens[:, :5], caches, 0)[0], model(tokens[:, 5:7], caches, 5)[0]]  # prefill, a chunk
        pieces += [model(tokens[:, p : p + 1], caches, p)[0] for p in range(7, 12)]  # one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def case(router="topk_softmax", decode_tokens=4):
    return Case(
        kind="moe",
        model=ModelConfig(vocab_size=40, d_model=16, n_heads=2, seq_len=10),
        moe=MoEConfig(num_experts=4, top_k=1, router=router, capacity_factor=None),
        run=RunSettings(batch_size=2, decode_tokens=decode_tokens, device="cpu"),
    )


def test_decode_workload_generates_the_requested_tokens():
    c = case()
    model = TransformerLM(c.model, c.moe)
    workload = make_workload("decode", model, c, torch.device("cpu"))
    assert workload.tokens_per_step == 2 * 4 and not workload.training
    workload.step()
    workload.step()  # decoding again from the same prefix is allowed
    finished = workload.finish()
    assert finished.pop("ttft_ms") > 0  # the prefill, timed after decoding
    assert finished == {"prompt_len": 6, "decode_tokens": 4}
    assert workload.context_len == 6 + 2


def test_decode_refuses_expert_choice_and_too_long_generation():
    c = case(router="expert_choice")
    with pytest.raises(ValueError, match="not causal"):
        make_workload("decode", TransformerLM(c.model, c.moe), c, torch.device("cpu"))
    c = case(decode_tokens=10)
    with pytest.raises(ValueError, match="decode_tokens"):
        make_workload("decode", TransformerLM(c.model, c.moe), c, torch.device("cpu"))
