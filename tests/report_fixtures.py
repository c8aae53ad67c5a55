"""A synthetic run folder with the runner's layout, for analysis and report tests.

Values follow simple known formulas (so tests can check ratios by hand) and include what real
runs contain: failed/oom/timeout rows, energy missing with its reason, dropless MoE cases.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

SUITE_YAML = """\
name: report-fixture
description: {description}
model: {{d_model: 64, n_layers: 2, d_ff: 256, seq_len: 64}}
run: {{batch_size: 4, repeats: 5}}
workloads: [train_step, forward]
sweep:
  grid:
    moe.num_experts: [2, 4, 8]
    moe.top_k: [1, 2]
    moe.capacity_factor: [1.0, 1.25, null]
"""

TOKENS_PER_STEP = 4 * 64
DENSE_LATENCY_MS = {("train_step", 1): 20.0, ("train_step", 2): 30.0, ("forward", 1): 7.0, ("forward", 2): 10.0}
FAILURES = {
    ("E8 k2 cf1", "train_step"): ("oom", "OutOfMemoryError: tried to allocate 2.0 GiB"),
    ("E8 k1 dropless", "forward"): ("timeout", "no result after 600 s"),
}


def case_id(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:12]


def moe_latency_ms(workload: str, experts: int, k: int, cf: float | None) -> float:
    """MoE latency = dense latency x a factor growing with experts, capacity (dropless = 1.5) and k."""
    factor = 0.72 + 0.07 * math.log2(experts) + 0.1 * (cf or 1.5) + 0.05 * (k - 1) + 0.04 * (workload == "forward")
    return DENSE_LATENCY_MS[(workload, k)] * factor


def _timing(latency_ms: float, rel_ci: float = 0.03) -> dict[str, Any]:
    return {
        "tokens_per_s": TOKENS_PER_STEP / (latency_ms / 1000),
        "latency_ms_median": latency_ms,
        "latency_ms_p90": latency_ms * 1.05,
        "latency_ms_iqr": latency_ms * 0.04,
        "latency_ms_ci_low": latency_ms * (1 - rel_ci),
        "latency_ms_ci_high": latency_ms * (1 + rel_ci),
        "repeats": 5,
        "timer": "perf_counter",
        "noisy": False,
    }


def _energy(tokens_per_s: float, with_energy: bool) -> dict[str, Any]:
    if not with_energy:
        return {"energy_j": float("nan"), "energy_j_per_token": float("nan"), "avg_power_w": float("nan"),
                "idle_power_w": float("nan"), "energy_source": "unavailable: no NVML (CPU run)"}
    power = 250.0
    return {"energy_j": power * 2.0, "energy_j_per_token": power / tokens_per_s, "avg_power_w": power,
            "idle_power_w": 60.0, "energy_source": "nvml_total_energy"}


def _common(**kw: Any) -> dict[str, Any]:
    row = {"d_model": 64, "n_layers": 2, "seq_len": 64, "batch_size": 4, "dtype": "float32",
           "device": "cpu", "seed": 0, "memory_source": "peak_rss", "suite": "report-fixture",
           "achieved_tflops": float("nan"), "mfu": float("nan"), "error": None}
    row.update(kw)
    return row


def rows(with_energy: bool = False, with_quality: bool = False) -> list[dict[str, Any]]:
    out = []
    dense_of = {k: case_id(f"dense k{k}") for k in (1, 2)}
    serves: dict[int, list[str]] = {1: [], 2: []}
    moe_rows = []
    for experts in (2, 4, 8):
        for k in (1, 2):
            for cf in (1.0, 1.25, None):
                label = f"E{experts} k{k} " + (f"cf{cf:g}" if cf is not None else "dropless")
                cid = case_id(label)
                serves[k].append(cid)
                for workload in ("train_step", "forward"):
                    lat = moe_latency_ms(workload, experts, k, cf)
                    timing = _timing(lat)
                    row = _common(
                        case_id=cid, kind="moe", baseline=None, matched_to=dense_of[k], param_matched_to=None,
                        workload=workload, status="ok", num_experts=experts, top_k=k, capacity_factor=cf,
                        dropless=cf is None, router="topk_softmax", impl="loop", granularity=1,
                        num_shared_experts=0, d_ff=256, d_expert=256,
                        params_total=100_000 + experts * 33_000, params_active=100_000 + k * 33_000,
                        flops_per_token=200_000.0 * k, train_flops_per_token=600_000.0 * k,
                        baseline_flops_per_token=200_000.0 * k, flop_match_error=0.004,
                        peak_memory_bytes=(300 + 8 * experts) * 2**20,
                        peak_memory_net_bytes=(40 + 8 * experts) * 2**20,
                        memory_estimate_bytes=(42 + 8 * experts) * 2**20,
                        dropped_fraction={1.0: 0.08, 1.25: 0.02, None: 0.0}[cf] * (1 + 0.2 * math.log2(experts)),
                        load_cv=0.1 * experts, max_mean_load=1.0 + 0.1 * experts, experts_unused=0.0,
                        router_entropy=math.log(experts) * 0.9, realized_capacity_factor=1.0 + 0.1 * experts,
                        aux_loss=1.05, **timing, **_energy(timing["tokens_per_s"], with_energy),
                    )
                    if with_quality:
                        row["val_loss"] = 3.0 - 0.05 * math.log2(experts)
                    failure = FAILURES.get((label, workload))
                    if failure:
                        row.update({c: float("nan") for c in timing if c not in ("timer", "repeats", "noisy")})
                        row.update(status=failure[0], error=failure[1], dropped_fraction=float("nan"),
                                   peak_memory_bytes=None, peak_memory_net_bytes=None)
                    moe_rows.append(row)
    for k in (1, 2):
        for workload in ("train_step", "forward"):
            timing = _timing(DENSE_LATENCY_MS[(workload, k)])
            row = _common(
                case_id=dense_of[k], kind="dense", baseline="flop_matched", matched_to=" ".join(serves[k]),
                param_matched_to=None, workload=workload, status="ok", d_ff=256 * k,
                params_total=100_000 + k * 33_000, params_active=100_000 + k * 33_000,
                flops_per_token=200_000.0 * k, train_flops_per_token=600_000.0 * k,
                baseline_flops_per_token=200_000.0 * k, flop_match_error=0.004,
                peak_memory_bytes=300 * 2**20, peak_memory_net_bytes=40 * 2**20, memory_estimate_bytes=42 * 2**20,
                **timing, **_energy(timing["tokens_per_s"], with_energy),
            )
            if with_quality:
                row["val_loss"] = 3.1
            out.append(row)
    return out + moe_rows


def make_run(
    run_dir: Path,
    *,
    description: str = "Synthetic run: expert count x top-k x capacity factor.",
    with_energy: bool = False,
    with_quality: bool = False,
    extra_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Write results.csv, results.parquet, run.json and routing_layers.csv into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows(with_energy, with_quality) + (extra_rows or []))
    df.to_csv(run_dir / "results.csv", index=False)
    df.astype({"case_id": "string", "baseline": "string", "error": "string", "param_matched_to": "string",
               "peak_memory_bytes": "Int64", "peak_memory_net_bytes": "Int64"}).to_parquet(run_dir / "results.parquet", index=False)
    suite_yaml = SUITE_YAML.format(description=json.dumps(description))
    info = {
        "suite": {"name": "report-fixture", "description": description, "workloads": ["train_step", "forward"],
                  "baselines": ["flop_matched"]},
        "suite_yaml": suite_yaml,
        "fingerprint": {"python": "3.11.2", "torch": "2.13.0+cpu", "device_name": "cpu",
                        "cpu_model": "Synthetic CPU @ 2.0GHz", "threads": 2, "git_commit": "abc1234",
                        "harness_version": "0.1.0"},
        "started": "2025-01-01T10:00:00+00:00",
        "finished": "2025-01-01T10:05:00+00:00",
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    layers = [
        {"case_id": r["case_id"], "workload": r["workload"], "layer": layer,
         "dropped_fraction": r["dropped_fraction"], "load_cv": r["load_cv"]}
        for r in df.to_dict("records") if r["kind"] == "moe" and r["status"] == "ok" for layer in (0, 1)
    ]
    pd.DataFrame(layers).to_csv(run_dir / "routing_layers.csv", index=False)
    return run_dir
