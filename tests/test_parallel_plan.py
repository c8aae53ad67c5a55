"""Per-rank accounting under expert and data parallelism, and `plan` at EP 8 for a 100B-class preset."""
from __future__ import annotations

import json

import pytest

from harness import accounting, presets
from harness.cli import main as cli_main
from harness.config import ModelConfig, MoEConfig
from harness.models.moe.experts import Experts
from harness.models.transformer import TransformerLM
from harness.parallel.group import Layout
from harness.parallel.model import local_experts


def _preset(name: str) -> tuple[ModelConfig, MoEConfig]:
    data = presets.resolve(name)
    return ModelConfig.model_validate(data["model"]), MoEConfig.model_validate(data["moe"])


@pytest.mark.parametrize("ep", [1, 2, 4])
def test_params_per_rank_match_a_sharded_model(ep):
    model = ModelConfig(vocab_size=64, d_model=16, n_layers=3, n_heads=2, d_ff=32, seq_len=8)
    moe = MoEConfig(num_experts=8, top_k=2, every=2, num_shared_experts=1)
    for rank in range(ep):
        built = TransformerLM(model, moe)
        keep = Layout(ep, ep, rank).local_experts(moe.experts)
        for layer in built.moe_layers():
            layer.experts = local_experts(layer.experts, keep)
        held = sum(p.numel() for p in built.parameters())
        assert held == accounting.params_per_rank(model, moe, ep)
    assert accounting.params_per_rank(model, None, ep) == accounting.param_counts(model, None).total


def test_local_experts_keep_their_weights():
    full = Experts(4, 8, 16)
    part = local_experts(full, range(2, 4))
    assert part.num_experts == 2
    assert (part.w_in == full.w_in[2:4]).all() and (part.w_out == full.w_out[2:4]).all()


def test_all_to_all_volume_per_token():
    model, moe = _preset("mixtral-8x7b")
    # per assignment: its d_model hidden state out and its output back, bf16, 7 of 8 experts remote
    forward = 2 * moe.top_k * model.d_model * 2 * 7 / 8
    assert accounting.all_to_all_bytes_per_token(model, moe, 8, "bfloat16", training=False) == forward
    assert accounting.all_to_all_bytes_per_token(model, moe, 8, "bfloat16", training=True) == 2 * forward
    assert accounting.all_to_all_bytes_per_token(model, moe, 1, "bfloat16", training=True) == 0
    assert accounting.all_to_all_bytes_per_token(model, None, 8, "bfloat16", training=True) == 0


def test_footprint_splits_weights_and_batch():
    model, moe = _preset("mixtral-8x7b")
    model = model.model_copy(update={"seq_len": 1024})
    one = accounting.parallel_footprint(model, moe, 8, 1, 1, "bfloat16")
    ep8 = accounting.parallel_footprint(model, moe, 8, 8, 8, "bfloat16")
    counts = accounting.param_counts(model, moe)
    assert ep8["params_per_rank"] == counts.total - counts.experts + counts.experts // 8
    # bf16 weights, but the router stays float32 (it routes in fp32 whatever the model dtype)
    assert ep8["memory_per_rank"]["weights"] == 2 * (ep8["params_per_rank"] - counts.router) + 4 * counts.router
    assert ep8["memory_per_rank"]["total"] < one["memory_per_rank"]["total"] / 4
    assert ep8["grad_sync_bytes_per_rank_step"] == 2 * (counts.total - counts.experts)  # experts have one copy
    assert one["grad_sync_bytes_per_rank_step"] == 0 and one["all_to_all_bytes_per_rank_step"] == 0
    per_step = ep8["all_to_all_bytes_per_token_layer"] * 1024 * model.n_layers  # one sequence per rank
    assert ep8["all_to_all_bytes_per_rank_step"] == per_step
    ep4 = accounting.parallel_footprint(model, moe, 8, 8, 4, "bfloat16")  # each expert on 2 ranks
    assert ep4["dp_size"] == 2
    assert ep4["grad_sync_bytes_per_rank_step"] == 2 * (counts.total - counts.experts + counts.experts // 4)
    with pytest.raises(ValueError, match="divisible"):
        accounting.parallel_footprint(model, moe, 4, 8, 8)


def test_plan_mixtral_at_ep8(capsys):
    args = ["plan", "mixtral-8x7b", "--set", "parallel.nproc=8", "--set", "parallel.expert=8",
            "--set", "run.batch_size=8", "--set", "model.seq_len=4096"]
    assert cli_main([*args, "--format", "json"]) == 0
    moe_row, flop, param, peer = json.loads(capsys.readouterr().out)
    assert (moe_row["world_size"], moe_row["ep_size"], moe_row["dp_size"]) == (8, 8, 1)
    assert (flop["world_size"], flop["ep_size"], flop["dp_size"]) == (8, 1, 8)  # dense: data parallel
    assert moe_row["params_per_rank"] < moe_row["params_total"] / 6
    assert flop["all_to_all_bytes_per_rank_step"] == 0
    # 4,096 tokens per rank x 32 layers x (2 assignments x 4,096 x 2 bytes x 7/8, out and back, fwd and bwd)
    assert moe_row["all_to_all_bytes_per_rank_step"] == 4096 * 32 * 2 * 2 * 4096 * 2 * 7 / 8 * 2
    assert cli_main(args) == 0
    table = capsys.readouterr().out
    assert "a2a/rank/step" in table and "7.0 GiB" in table
    assert cli_main(["plan", "mixtral-8x7b", "--set", "parallel.nproc=8", "--set", "parallel.expert=8"]) == 2
    assert "must be divisible by parallel.nproc" in capsys.readouterr().err
