"""The one rule that turns a comparison into a verdict: better, worse, same, or unreliable.

Every place that judges a pair (the terminal summary, the report's cards, headline and heatmap,
`harness.paired`, `compare`, A/A calibration) calls `decide`; none re-implements it. It is generic:
a ratio (throughput MoE/dense, latency now/before) or a difference (val_loss MoE - dense across
seeds) with its confidence interval, which direction is better, and what disturbed either side.

The rule, in order:
1. Either side disturbed (a `contended` or `unstable` row): unreliable, whatever the interval says.
   A stalled process can be tight and wrong, so no interval can vouch for it.
2. No interval: unreliable.
   Nor is there one worth judging when either side rests on a single worker process and no A/A
   spread was measured: two processes of identical code differ by more than one process's steps
   show (17% on the development VM; an A/A pair 0.78x-0.91x), so that interval omits the
   largest source of variation.
3. The interval lies inside the equivalence band (ratio within [1/(1+m), 1+m], difference within
   [-m, m]): same. The band is the smallest change worth a verdict on this machine: the A/A spread
   when one was measured, else `DEFAULT_MARGIN`.
4. The interval excludes no-change (1, or 0): better or worse.
5. Otherwise (it includes no-change but reaches past the band): unreliable, too wide to tell.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from harness.values import as_number

FASTER, SLOWER, SAME, UNRELIABLE = "faster", "slower", "same", "unreliable"
VERDICTS = (FASTER, SLOWER, SAME, UNRELIABLE)
DEFAULT_MARGIN = 0.05
"""Relative change below which a measured difference is called 'same' when no A/A spread is known."""

# why a verdict is unreliable
CONTENDED, UNSTABLE, WIDE, NO_INTERVAL = "contended", "unstable", "wide", "no interval"
ONE_PROCESS = "one process"


@dataclass(frozen=True)
class Disturbance:
    """Something that makes one side's measurement unfit to judge: `kind` is contended or unstable."""

    side: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.side} {self.kind}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    cause: Optional[str] = None  # for unreliable: CONTENDED, UNSTABLE, WIDE or NO_INTERVAL

    @property
    def decided(self) -> bool:
        return self.verdict in (FASTER, SLOWER)


def disturbances(row: Mapping[str, Any], side: str, prefix: str = "", suffix: str = "") -> list[Disturbance]:
    """The disturbance flags of one result row (`contended`/`contention_reason` from the contention
    measurement, `unstable`/`unstable_reason` from training-stability checks), where present; `prefix`
    and `suffix` name one side's columns in a joined table (e.g. 'dense_contended', 'contended_b')."""
    found = []
    for kind, flag, why in ((CONTENDED, "contended", "contention_reason"), (UNSTABLE, "unstable", "unstable_reason")):
        if _true(row.get(prefix + flag + suffix)):
            found.append(Disturbance(side, kind, _text(row.get(prefix + why + suffix))))
    return found


def decide(
    estimate: Any,
    low: Any,
    high: Any,
    *,
    scale: str = "ratio",
    higher_is_better: bool = True,
    margin: Optional[float] = None,
    disturbed: Iterable[Disturbance] = (),
    words: tuple[str, str] = (FASTER, SLOWER),
    processes: Optional[int] = None,
    margin_measured: bool = False,
) -> Verdict:
    """The verdict on one comparison (see the module docstring for the rule).

    `scale`: 'ratio' (no change = 1, `margin` relative) or 'difference' (no change = 0, `margin` in
    the quantity's unit). `words`: what to call better and worse (throughput: faster, slower).
    `processes`: the fewer worker processes either side rests on (None: not a timing, or unknown);
    `margin_measured`: the margin is an A/A spread, which already holds process-to-process variation.
    """
    if scale not in ("ratio", "difference"):
        raise ValueError(f"scale must be 'ratio' or 'difference', got {scale!r}")
    disturbed = list(disturbed)
    if disturbed:
        cause = CONTENDED if any(d.kind == CONTENDED for d in disturbed) else UNSTABLE
        return Verdict(UNRELIABLE, "; ".join(map(str, disturbed)), cause)
    est, lo, hi = as_number(estimate), as_number(low), as_number(high)
    if lo is None or hi is None or (scale == "ratio" and not (lo > 0 and hi > 0)):
        return Verdict(UNRELIABLE, "no confidence interval", NO_INTERVAL)
    if processes is not None and processes < 2 and not margin_measured:
        return Verdict(UNRELIABLE, "one worker process per side and no A/A spread: the interval omits the "
                       "variation between processes", ONE_PROCESS)
    m = DEFAULT_MARGIN if margin is None else margin
    null = 1.0 if scale == "ratio" else 0.0
    band = (1 / (1 + m), 1 + m) if scale == "ratio" else (-m, m)
    shown = _interval(lo, hi, scale)
    within = f"±{m:.0%}" if scale == "ratio" else f"±{m:g}"
    if band[0] <= lo and hi <= band[1]:
        return Verdict(SAME, f"{shown} within {within}")
    if lo > null or hi < null:
        better = (lo > null) == higher_is_better
        side = "above" if lo > null else "below"
        return Verdict(words[0] if better else words[1], f"{shown} {side} {null:g}")
    what = f"{est:.3g}" if est is not None else "estimate"
    return Verdict(UNRELIABLE, f"{shown} around {what} includes {null:g} and reaches past {within}: too wide to tell",
                   WIDE)


def fewest_processes(*counts: Any) -> Optional[int]:
    """The smallest process count among a comparison's sides; None when no side recorded one (runs
    from before processes were counted)."""
    known = [int(n) for n in map(as_number, counts) if n is not None]
    return min(known) if known else None


def unreliable_sentence(
    verdicts: Sequence[Optional[Verdict]], noun: str = "pairs", load: Optional[float] = None, cores: Optional[int] = None,
    interleaved: bool = True,
) -> Optional[str]:
    """One sentence for the top of the report and the end of `run` when any verdict is unreliable:
    how many, why, and what to do. None when every judged comparison was decided or same.

    `interleaved=False`: some pair too wide to tell was not timed interleaved. Then that is the
    advice: two processes per side decided none of the smoke suite's 8 pairs (intervals spanning
    0.01x-55x), the interleaved pairs of the same run 7."""
    judged = [v for v in verdicts if v is not None]
    bad = [v for v in judged if v.verdict == UNRELIABLE]
    if not bad:
        return None
    causes = Counter(v.cause for v in bad)
    why, todo = [], []
    if causes[CONTENDED]:
        busy = f" (load {load:.1f} on {cores} cores)" if load is not None and cores else ""
        why.append(f"{causes[CONTENDED]} measured while the machine was busy{busy}")
        todo.append("re-run on an idle machine, or with run.threads: 1 and run.processes: 3")
    if causes[UNSTABLE]:
        why.append(f"{causes[UNSTABLE]} with unstable training")
        todo.append("look at the unstable rows' reasons (more seeds, gradient clipping)")
    if causes[WIDE]:
        why.append(f"{causes[WIDE]} with an interval too wide to tell")
        todo.append("add processes (run.processes: 3 or more) or steps (run.repeats)" if interleaved else
                    "time each pair interleaved (interleave: true), or add processes (run.processes: 3 or more)")
    if causes[ONE_PROCESS]:
        why.append(f"{causes[ONE_PROCESS]} timed in one process per side")
        todo.append("set run.processes: 2 or more, or calibrate: aa")
    if causes[NO_INTERVAL]:
        why.append(f"{causes[NO_INTERVAL]} without a confidence interval")
    sentence = f"{len(bad)} of {len(judged)} {noun} unreliable: {', '.join(why)}."
    if todo:
        sentence += " " + "; ".join(todo).capitalize() + "."
    return sentence


def _interval(lo: float, hi: float, scale: str) -> str:
    return f"CI [{lo:.3g}, {hi:.3g}]" if scale == "ratio" else f"CI [{lo:+.3g}, {hi:+.3g}]"


def _true(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):  # pandas NA
        return False


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    return "" if text in ("<NA>", "nan", "None") else text
