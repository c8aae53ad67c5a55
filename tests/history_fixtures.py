"""Synthetic histories: nightly runs of two configurations with known levels, noise and steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.history import Entry, History, machine_class

FP = {"device_name": "cpu", "device_count": 0, "cpu_model": "Test CPU", "torch": "2.13.0", "cuda": None,
      "threads": 2, "hostname": "ci"}
TOKENS = 512


def nightly_row(case_id: str, latency_ms: float, memory: float = 100e6, workload: str = "forward") -> dict:
    return {"case_id": case_id, "workload": workload, "status": "ok", "kind": "moe", "num_experts": 8, "top_k": 2,
            "capacity_factor": 1.0, "suite": "nightly", "tokens_per_s": TOKENS / latency_ms * 1e3,
            "latency_ms_median": latency_ms, "latency_ms_ci_low": latency_ms * 0.98,
            "latency_ms_ci_high": latency_ms * 1.02, "peak_memory_bytes": memory, "memory_source": "peak_rss",
            "samples_s": [latency_ms / 1e3] * 5}


def make_history(path: Path, nights: int = 16, step_at: int | None = 10, step: float = 1.3, noise: float = 0.03,
                 seed: int = 0, fingerprint: dict = FP) -> History:
    """`nights` runs of c1 (latency 10 ms, x `step` from night `step_at`) and c2 (steady 20 ms)."""
    rng = np.random.default_rng(seed)
    history = History.at(path)
    for night in range(nights):
        level = 10.0 * (step if step_at is not None and night >= step_at else 1.0)
        rows = [nightly_row("c1", level * float(np.exp(noise * rng.standard_normal()))),
                nightly_row("c2", 20.0 * float(np.exp(noise * rng.standard_normal())), memory=200e6)]
        history.add(Entry(key=f"{seed}-{night:04d}-{fingerprint.get('cpu_model')}",
                          recorded=f"2026-11-{night + 1:02d}T03:00:00+00:00", started=f"2026-11-{night + 1:02d}T02:00:00+00:00",
                          machine=machine_class(fingerprint), git_commit=f"c{night:02d}{'0' * 38}", suite="nightly",
                          source=f"reports/nightly-{night}", n_rows=len(rows), fingerprint=fingerprint, rows=rows))
    return history
