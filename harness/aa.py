"""A/A calibration: how far apart does this machine put two identical measurements right now?

With `calibrate: aa` (or `python -m harness aa SUITE`) every MoE case also gets an identical copy,
measured and judged exactly like a real pair: same runner, processes, interleaving, intervals and
verdict rule. Any "faster"/"slower" verdict between copies is a false verdict; the spread of their
ratios is the machine's noise floor, which the real pairs' verdicts and `compare` use as the
smallest change worth a verdict.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.verdict import FASTER, SLOWER, UNRELIABLE

SPREAD_QUANTILE = 0.95


@dataclass(frozen=True)
class AASummary:
    pairs: int  # A/A pairs with a verdict (both copies measured)
    false_verdicts: int  # faster or slower between identical copies
    unreliable: int
    spread: float | None  # 95th percentile of max(r, 1/r) - 1 over the pairs' ratios

    @property
    def false_rate(self) -> float | None:
        return self.false_verdicts / self.pairs if self.pairs else None

    def sentence(self) -> str:
        if not self.pairs:
            return "A/A calibration: no pair of identical copies was measured"
        spread = f"ratios within ±{self.spread:.1%} (95th percentile)" if self.spread is not None else "no ratio"
        return (f"A/A calibration: {self.false_verdicts} of {self.pairs} identical pairs got a faster/slower verdict "
                f"({self.false_rate:.0%}), {self.unreliable} unreliable; {spread}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "false_rate": self.false_rate}


def spread(ratios: Any) -> float | None:
    """How far identical copies' ratios stray from 1: the SPREAD_QUANTILE of max(r, 1/r) - 1."""
    r = pd.to_numeric(pd.Series(ratios), errors="coerce").to_numpy(dtype=float)
    r = r[np.isfinite(r) & (r > 0)]
    if not r.size:
        return None
    return float(np.quantile(np.exp(np.abs(np.log(r))), SPREAD_QUANTILE) - 1)


def summarize(aa_pairs: pd.DataFrame) -> AASummary:
    """From `paired(df, baseline='aa_copy')`: counts of verdicts and the ratio spread."""
    judged = aa_pairs[aa_pairs["verdict"].notna()] if len(aa_pairs) else aa_pairs
    if judged.empty:
        return AASummary(0, 0, 0, None)
    verdicts = judged["verdict"].astype(str)
    return AASummary(
        pairs=len(judged),
        false_verdicts=int(verdicts.isin([FASTER, SLOWER]).sum()),
        unreliable=int((verdicts == UNRELIABLE).sum()),
        spread=spread(judged["throughput_ratio"]),
    )


def main(args: argparse.Namespace) -> int:
    """`python -m harness aa SUITE`: run the suite's MoE cases against identical copies only."""
    from harness import runner

    args.overrides = [*args.overrides, "calibrate=aa", "baselines=[]"]
    return runner.main(args)


def margin_from(summary: AASummary | None, default: float) -> float:
    """The verdicts' equivalence margin: the A/A spread when one was measured (never below `default`)."""
    if summary is None or summary.spread is None or not math.isfinite(summary.spread):
        return default
    return max(default, summary.spread)
