"""--shard balances estimated work, not case counts (harness/shards.py)."""
from __future__ import annotations

import random

import pytest
import yaml

from harness import accounting
from harness.runner import jobs_for
from harness.shards import assign, case_cost, shard_ids
from harness.suite import build_suite, load_suite
from harness.sweep import expand

UNEVEN = """
name: uneven
model: {vocab_size: 256, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1}
run: {quality_steps: 10}
workloads: [quality]
baselines: []
sweep: {grid: {run.quality_steps: [1000, 100, 200, 300, 400]}}
"""


def test_case_cost_counts_the_steps_a_case_will_take():
    case = expand(build_suite(yaml.safe_load(UNEVEN))).cases[0]
    tokens = case.run.batch_size * case.model.seq_len
    train = accounting.step_flops_per_token(case.model, case.moe, training=True)
    forward = accounting.step_flops_per_token(case.model, case.moe, training=False)
    expected = (1000 * train + 1 * case.run.eval_batches * forward) * tokens * case.run.processes
    assert case_cost(case, ["quality"]) == pytest.approx(expected)
    curves = case.model_copy(update={"run": case.run.model_copy(update={"eval_every": 100})})
    assert case_cost(curves, ["quality"]) == pytest.approx(expected + 10 * case.run.eval_batches * forward * tokens
                                                            * case.run.processes)
    timed = (1 + case.run.warmup + case.run.repeats) * train * tokens * case.run.processes
    assert case_cost(case, ["quality", "train_step"]) == pytest.approx(expected + timed)


def test_one_long_case_gets_a_shard_of_its_own():
    """By count (or by id) the 1,000-step case would share a shard; by work it runs alone beside the
    other four, whose 1,000 steps together equal it."""
    suite = build_suite(yaml.safe_load(UNEVEN))
    expansion = expand(suite)
    long_case = next(c for c in expansion if c.run.quality_steps == 1000)
    shards = [{job.case.id for job in jobs_for(suite, expansion, (i, 2))} for i in (1, 2)]
    assert {long_case.id} in shards
    assert sorted(map(len, shards)) == [1, 4]


def test_every_case_lands_in_exactly_one_shard_whatever_the_order():
    suite = load_suite("suites/quality.yaml")
    cases = expand(suite).cases
    assert len(cases) == 35
    first = assign(cases, suite.workloads, 2)
    assert first == assign(list(reversed(cases)), suite.workloads, 2)
    assert set(first) == {c.id for c in cases} and set(first.values()) == {1, 2}
    halves = [shard_ids(cases, suite.workloads, (i, 2)) for i in (1, 2)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(first)
    assert sorted(map(len, halves)) == [17, 18]  # FLOP-matched cases cost about the same
    assert shard_ids(cases, suite.workloads, None) is None


@pytest.mark.parametrize("seed", range(5))
def test_no_shard_carries_more_than_one_case_beyond_the_lightest(seed):
    """Greedy to the lightest shard: the heaviest ends at most one case's cost above the lightest
    (the case last added to it found it lightest), on random step budgets."""
    rng = random.Random(seed)
    data = yaml.safe_load(UNEVEN)
    data["sweep"]["grid"]["run.quality_steps"] = rng.sample(range(10, 2000), 12)
    suite = build_suite(data)
    cases = expand(suite).cases
    count = rng.randint(2, 4)
    where = assign(cases, suite.workloads, count)
    cost = {c.id: case_cost(c, suite.workloads) for c in cases}
    load = [sum(cost[i] for i, s in where.items() if s == shard) for shard in range(1, count + 1)]
    assert max(load) - min(load) <= max(cost.values()) + 1e-6
