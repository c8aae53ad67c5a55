"""GPU smoke check: run the shipped gpu-smoke suite on one CUDA GPU and print what matters for the question.

    python -m harness.gpu_smoke [--out DIR] [--set KEY=VALUE ...]
    python -m harness.gpu_smoke --multi      # suites/gpu-multi.yaml: EP 2 vs DP 2 on 2 GPUs (NCCL)

Prints tokens/s, MFU, J/token and energy source per row, then MoE/dense ratios, then the checks.
Exit codes: 0 all checks pass; 1 a row failed or a measurement looks wrong (energy not from NVML,
J/token missing, MFU outside (0, 1]; with --multi also a group not on NCCL, an MoE row without a
measured all-to-all share in (0, 1), a missing straggler ratio); 2 no CUDA GPU, or fewer than 2 with
--multi (nothing was run).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Optional, Sequence

import pandas as pd

from harness import shipped
from harness.text_table import cell, text_table

SUITE = shipped.suite("gpu-smoke")  # suites/gpu-smoke.yaml, package data in a wheel
MULTI_SUITE = shipped.suite("gpu-multi")


def rows_table(frame: pd.DataFrame) -> str:
    headers = ["case_id", "kind", "k", "workload", "tokens/s", "MFU", "J/token", "W", "energy_source"]
    rows = [[r["case_id"], r["kind"], cell(r.get("top_k"), ".0f"), r["workload"], cell(r.get("tokens_per_s"), ",.0f"),
             cell(r.get("mfu"), ".1%"), cell(r.get("energy_j_per_token"), ".3g"), cell(r.get("avg_power_w"), ".0f"),
             str(r.get("energy_source"))]
            for _, r in frame.sort_values(["workload", "kind", "case_id"]).iterrows()]
    return "\n".join(text_table(headers, rows, right={2, 4, 5, 6, 7}))


def ratios_table(pairs: pd.DataFrame) -> str:
    headers = ["case_id", "k", "workload", "tokens/s x", "J/token x", "MFU moe"]
    rows = [[r["case_id"], cell(r.get("top_k"), ".0f"), r["workload"], cell(r.get("throughput_ratio"), ".3f"),
             cell(r.get("energy_per_token_ratio"), ".3f"), cell(r.get("mfu"), ".1%")]
            for _, r in pairs.sort_values(["workload", "case_id"]).iterrows()]
    return "\n".join(["MoE / FLOP-matched dense (throughput > 1 and J/token < 1 favour MoE):",
                      *text_table(headers, rows, right={1, 3, 4, 5})])


def problems(frame: pd.DataFrame) -> list[str]:
    """What a real GPU run must get right; each item names the row and what is wrong."""
    found = []
    for _, r in frame.iterrows():
        where = f"{r['case_id']} {r['workload']}"
        if r.get("status") != "ok":
            found.append(f"{where}: status {r.get('status')} ({r.get('error')})")
            continue
        source = str(r.get("energy_source"))
        if source not in ("nvml_counter", "nvml_power_sampling"):
            found.append(f"{where}: energy not measured by NVML ({source})")
        elif pd.isna(r.get("energy_j_per_token")) or not r.get("energy_j_per_token") > 0:
            found.append(f"{where}: J/token missing")
        mfu = r.get("mfu")
        if mfu is None or pd.isna(mfu):
            found.append(f"{where}: MFU missing ({r.get('peak_tflops_source')})")
        elif not 0 < mfu <= 1:
            found.append(f"{where}: MFU {mfu:.3f} outside (0, 1]: FLOP accounting or peak table is wrong")
        if pd.notna(r.get("world_size")) and r.get("world_size", 1) > 1:
            found += [f"{where}: {p}" for p in group_problems(r)]
    return found


def group_problems(r: pd.Series) -> list[str]:
    """A multi-GPU row: the group ran on NCCL, and the all-to-all of an expert-parallel row was measured."""
    found = []
    if r.get("backend") != "nccl":
        found.append(f"backend {r.get('backend')}, not nccl")
    if pd.isna(r.get("straggler_ratio")) or not r.get("straggler_ratio") >= 1.0:
        found.append(f"straggler ratio {r.get('straggler_ratio')} missing or below 1")
    if r.get("ep_size", 1) > 1:
        share = r.get("all_to_all_share")
        if pd.isna(share) or not 0 < share < 1:
            found.append(f"all-to-all share {share} outside (0, 1): the exchange was not timed")
        if not r.get("all_to_all_bytes_per_rank", 0) > 0:
            found.append("no all-to-all bytes recorded")
    return found


def group_table(frame: pd.DataFrame) -> str:
    headers = ["case_id", "kind", "workload", "world", "ep", "dp", "a2a ms", "a2a share", "straggler", "rank step ms"]
    rows = [[r["case_id"], r["kind"], r["workload"], cell(r.get("world_size"), ".0f"), cell(r.get("ep_size"), ".0f"),
             cell(r.get("dp_size"), ".0f"), cell(r.get("all_to_all_ms"), ".2f"), cell(r.get("all_to_all_share"), ".1%"),
             cell(r.get("straggler_ratio"), ".3f"), cell(r.get("rank_step_ms"))]
            for _, r in frame.sort_values(["workload", "kind", "case_id"]).iterrows()]
    return "\n".join(text_table(headers, rows, right=range(3, 9)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (default reports/gpu-smoke-<timestamp>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--multi", action="store_true", help="suites/gpu-multi.yaml: expert parallel on 2 GPUs")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU is visible here; nothing was run", file=sys.stderr)
        return 2
    if args.multi and torch.cuda.device_count() < 2:
        print(f"gpu_smoke --multi: needs 2 CUDA GPUs, {torch.cuda.device_count()} visible; nothing was run",
              file=sys.stderr)
        return 2
    from harness import analysis
    from harness.cli import main as cli_main

    suite = MULTI_SUITE if args.multi else SUITE
    out = args.out or f"reports/{suite.stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    sets = [part for s in args.overrides for part in ("--set", s)]
    cli_main(["run", str(suite), "--out", out, "--no-report", "--allow-failures", "--quiet", *sets])
    frame = analysis.load(out)
    print()
    print(rows_table(frame))
    print()
    print(ratios_table(analysis.paired(frame)))
    if args.multi:
        print()
        print(group_table(frame))
    found = problems(frame)
    print()
    print("checks: " + ("all passed" if not found else f"{len(found)} problem(s)"))
    for line in found:
        print(f"  - {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
