"""Expansion: counts, deterministic ids, shared baselines, FLOP matching."""
import random

import pytest

from harness import accounting
from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.suite import build_suite, load_suite
from harness.sweep import expand, sweep_points


def suite_of(**data):
    return build_suite({"name": "t", **data})


def test_grid_times_zip_counts():
    suite = suite_of(
        moe={"num_experts": 8},
        sweep={
            "grid": {"moe.top_k": [1, 2], "moe.capacity_factor": [1.0, 2.0, None]},
            "zip": [{"model.d_model": [32, 64], "model.n_heads": [2, 4]}],
        },
    )
    points = sweep_points(suite)
    assert len(points) == 2 * 3 * 2
    assert {(p["model.d_model"], p["model.n_heads"]) for p in points} == {(32, 2), (64, 4)}
    expansion = expand(suite)
    moe = [c for c in expansion if c.kind == "moe"]
    dense = [c for c in expansion if c.kind == "dense"]
    assert len(moe) == 12
    # capacity factor does not change FLOPs, so 3 capacity settings share one baseline: 2 top_k x 2 sizes
    assert len(dense) == 4
    for d in dense:
        assert len(expansion.serves[d.id]) == 3


def test_ids_are_stable_and_distinct():
    a = expand(load_suite("suites/smoke.yaml"))
    b = expand(load_suite("suites/smoke.yaml"))
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    case = a.cases[0]
    rebuilt = Case.model_validate(case.model_dump(mode="json"))
    assert rebuilt.id == case.id
    changed = Case.model_validate({**case.model_dump(mode="json"), "run": {**case.run.model_dump(), "seed": 1}})
    assert changed.id != case.id


def test_smoke_expansion():
    expansion = expand(load_suite("suites/smoke.yaml"))
    moe = [c for c in expansion if c.kind == "moe"]
    assert len(moe) == 4 and sum(c.kind == "dense" for c in expansion) == 4
    levels = [(c.moe.num_experts, c.moe.top_k, c.moe.capacity_factor) for c in moe]
    for i, j in ((0, 1), (0, 2), (1, 2)):  # a half fraction: every pair of factors in all four combinations
        assert len({(lv[i], lv[j]) for lv in levels}) == 4
    for moe_id, rules in expansion.baseline_of.items():
        assert set(rules) == {"flop_matched"}
        assert moe_id in expansion.serves[rules["flop_matched"]]


def test_both_baselines():
    expansion = expand(suite_of(moe={"num_experts": 8, "top_k": 2}, baselines=["flop_matched", "param_matched"]))
    (moe,) = [c for c in expansion if c.kind == "moe"]
    rules = expansion.baseline_of[moe.id]
    by_id = expansion.by_id()
    flop, param = by_id[rules["flop_matched"]], by_id[rules["param_matched"]]
    assert flop.baseline == "flop_matched" and param.baseline == "param_matched"
    assert param.model.d_ff > flop.model.d_ff


@pytest.mark.parametrize("seed", range(30))
def test_flop_match_within_one_percent_on_random_configs(seed):
    rng = random.Random(seed)
    heads = rng.choice([1, 2, 4, 8])
    model = ModelConfig(
        vocab_size=rng.choice([64, 256, 1000]), d_model=heads * rng.choice([8, 16, 32]), n_layers=rng.randint(1, 6),
        n_heads=heads, d_ff=rng.choice([32, 64, 128, 512]), seq_len=rng.choice([16, 128, 1024]),
        activation=rng.choice(["gelu", "swiglu"]),
    )
    experts = rng.choice([1, 2, 4, 8, 16, 64])
    moe = MoEConfig(
        num_experts=experts, top_k=rng.randint(1, min(4, experts)), capacity_factor=rng.choice([None, 1.0, 1.25]),
        every=rng.choice([1, 2]), num_shared_experts=rng.choice([0, 0, 1]),
    )
    expansion_case = Case(kind="moe", model=model, moe=moe, run=RunSettings())
    dense_model = accounting.matched_dense(model, moe, "flop_matched")
    moe_flops = accounting.forward_flops(model, moe).total
    dense_flops = accounting.forward_flops(dense_model, None).total
    assert abs(dense_flops - moe_flops) / moe_flops < 0.01, (expansion_case, dense_model.d_ff)
