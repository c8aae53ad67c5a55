"""A row's timing columns are made in three places: a worker's row, a multi-rank group's row (rank 0
merges its ranks) and the row a run stores (pooled over processes). All three come from
`latency_columns`, so the same step times give the same columns, and those match numpy's."""
from __future__ import annotations

import numpy as np
import pytest

from harness.config import Case, ModelConfig, RunSettings
from harness.metrics.statistics import NOISY_RELATIVE_IQR, latency_columns, summarize
from harness.parallel.measure import merge
from harness.pooling import pool

SEED = 3


def _reference(samples: list[float], tokens_per_step: int) -> dict:
    """The columns computed directly from the step seconds (all but the interval)."""
    x = np.asarray(samples, dtype=float)
    q1, median, q3, p90 = np.quantile(x, [0.25, 0.5, 0.75, 0.9])
    return {"tokens_per_s": tokens_per_step / median, "latency_ms_median": median * 1e3,
            "latency_ms_p90": p90 * 1e3, "latency_ms_iqr": (q3 - q1) * 1e3, "repeats": x.size,
            "noisy": bool((q3 - q1) / median > NOISY_RELATIVE_IQR)}


@pytest.mark.parametrize("spread", [0.01, 0.5])
def test_latency_columns_match_numpy_on_random_samples(spread):
    samples = list(np.random.default_rng(0).lognormal(np.log(0.02), spread, size=40))
    stats = summarize(samples, seed=SEED)
    columns = latency_columns(stats, 96)
    assert columns == pytest.approx({**_reference(samples, 96), "latency_ms_ci_low": stats.ci_low * 1e3,
                                     "latency_ms_ci_high": stats.ci_high * 1e3})
    assert columns["noisy"] is (spread > 0.1)
    assert columns["latency_ms_ci_low"] < columns["latency_ms_median"] < columns["latency_ms_ci_high"]


@pytest.fixture(scope="module")
def worker_row():
    import torch

    from harness.worker import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case = Case(kind="dense",
                    model=ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=32, seq_len=8),
                    run=RunSettings(device="cpu", batch_size=2, warmup=1, repeats=7, measure_energy=False, seed=SEED))
        return measure(case, "forward")["row"]
    finally:
        torch.set_num_threads(threads)


def _timing(row: dict) -> dict:
    return {name: row[name] for name in latency_columns(summarize([1.0]), 1)}


def test_worker_group_and_pooled_rows_give_the_same_columns_for_the_same_steps(worker_row):
    samples, tokens = worker_row["samples_s"], worker_row["tokens_per_step"]
    worker = _timing(worker_row)
    assert worker == pytest.approx({**_reference(samples, tokens), "latency_ms_ci_low": worker["latency_ms_ci_low"],
                                    "latency_ms_ci_high": worker["latency_ms_ci_high"]})
    one_rank = [{"rank": 0, "local_rank": 0, "row": worker_row, "comm": [], "steps": []}]
    assert _timing(merge(one_rank, ep_size=1, backend="gloo", seed=SEED)) == worker
    assert _timing(pool([worker_row], seed=SEED)) == worker


def test_a_pooled_row_takes_its_columns_from_every_process_steps(worker_row):
    slower = {**worker_row, "samples_s": [2 * s for s in worker_row["samples_s"]]}
    row = pool([worker_row, slower], seed=SEED)
    both = worker_row["samples_s"] + slower["samples_s"]
    assert row["processes"] == 2
    assert _timing(row) == pytest.approx({**_reference(both, worker_row["tokens_per_step"]),
                                          "latency_ms_ci_low": row["latency_ms_ci_low"],
                                          "latency_ms_ci_high": row["latency_ms_ci_high"]})
    stats = summarize([worker_row["samples_s"], slower["samples_s"]], seed=SEED)
    assert (row["latency_ms_ci_low"], row["latency_ms_ci_high"]) == (stats.ci_low * 1e3, stats.ci_high * 1e3)
