"""A synthetic quality run with seeds: results, run.json and the held-out learning curves (steps.csv).

Three MoE configurations (E = 2, 4, 8, top-1) each against its FLOP-matched dense baseline, trained
on seeds 0, 1, 2. Every curve is loss(s) = floor + 2.5 * exp(-s / scale) evaluated every 10 steps up to
100, so the time to any target has a closed form the tests can check: the MoE's smaller scale makes
it reach its baseline's final loss earlier; E = 2 is made to lose (larger scale) so both directions
appear. MoE steps are slower (latency 1.2x), so the time speedup is the step speedup / 1.2.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

STEPS, EVERY, TOKENS_PER_STEP = 100, 10, 16 * 128
DENSE_MS, MOE_MS = 50.0, 60.0
SCALE = {"dense": 40.0, 2: 44.0, 4: 30.0, 8: 25.0}  # steps to fall by 1/e; lower learns faster
FLOOR = 1.5
SEED_SHIFT = {0: 0.0, 1: 0.02, 2: -0.015}  # what a seed does to both sides of a pair
MOE_SEED_NOISE = {0: 0.0, 1: 0.006, 2: -0.004}  # and to the MoE alone


def case_id(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:12]


def loss_at(step: float, scale: float, seed: int, moe: bool = False) -> float:
    return FLOOR + SEED_SHIFT[seed] + MOE_SEED_NOISE[seed] * moe + 2.5 * math.exp(-step / scale)


def _row(**kw: Any) -> dict[str, Any]:
    row = {"workload": "quality", "status": "ok", "suite": "quality-fixture", "d_model": 64, "n_layers": 4,
           "seq_len": 128, "batch_size": 16, "dtype": "float32", "device": "cpu", "quality_steps": STEPS,
           "quality_tokens": STEPS * TOKENS_PER_STEP, "tokens_per_step": TOKENS_PER_STEP, "corpus": "pydoc@python-3.11.7",
           "timer": "perf_counter", "repeats": 5, "noisy": False, "unstable": False, "error": None,
           "energy_source": "unavailable: no NVML (CPU run)", "memory_source": "peak_rss",
           "train_flops_per_token": 3.0e6}
    row.update(kw)
    return row


def _timing(ms: float) -> dict[str, float]:
    return {"latency_ms_median": ms, "latency_ms_ci_low": ms * 0.97, "latency_ms_ci_high": ms * 1.03,
            "tokens_per_s": TOKENS_PER_STEP / (ms / 1000), "peak_memory_bytes": 200 * 2**20}


def make_quality_run(run_dir: Path, seeds: tuple[int, ...] = (0, 1, 2), unstable: str | None = None) -> Path:
    """Write results.csv, run.json and steps.csv of a seeded quality run into run_dir. `unstable`: a
    case label ('E8 seed 1') whose row is marked unstable."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, steps = [], []
    for experts in (2, 4, 8):
        config = case_id(f"E{experts}")
        dense_config = case_id(f"dense E{experts}")
        for seed in seeds:
            moe_id, dense_id = case_id(f"E{experts} seed {seed}"), case_id(f"dense E{experts} seed {seed}")
            for cid, kind, scale, ms in ((moe_id, "moe", SCALE[experts], MOE_MS), (dense_id, "dense", SCALE["dense"], DENSE_MS)):
                final = loss_at(STEPS, scale, seed, kind == "moe")
                common = {"case_id": cid, "kind": kind, "seed": seed, "val_loss": final, **_timing(ms)}
                if kind == "moe":
                    label = f"E{experts} seed {seed}"
                    rows.append(_row(**common, config_id=config, baseline=None, matched_to=dense_id, num_experts=experts,
                                     top_k=1, capacity_factor=1.25, dropless=False, router="topk_softmax", impl="grouped",
                                     d_ff=256, dropped_fraction=0.05, unstable=label == unstable,
                                     unstable_reason="loss spike at step 40" if label == unstable else None))
                else:
                    rows.append(_row(**common, config_id=dense_config, baseline="flop_matched", matched_to=moe_id,
                                     d_ff=256 + experts // 4))
                for step in range(STEPS):
                    entry = {"case_id": cid, "workload": "quality", "step": step,
                             "loss": loss_at(step, scale, seed, kind == "moe") + 0.05 * math.sin(step)}
                    if (step + 1) % EVERY == 0:
                        entry["val_loss"] = loss_at(step + 1, scale, seed, kind == "moe")
                    steps.append(entry)
    pd.DataFrame(rows).to_csv(run_dir / "results.csv", index=False)
    pd.DataFrame(steps).to_csv(run_dir / "steps.csv", index=False)
    info = {"suite": {"name": "quality-fixture", "description": "Synthetic seeded quality run",
                      "workloads": ["quality"], "baselines": ["flop_matched"]},
            "suite_yaml": "name: quality-fixture\n", "fingerprint": {"harness_version": "0.1.0"},
            "started": "2025-01-01T10:00:00+00:00", "finished": "2025-01-01T10:05:00+00:00"}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return run_dir
