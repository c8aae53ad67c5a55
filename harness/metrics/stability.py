"""Training instability read off one row's per-step record: non-finite losses, divergence, loss spikes
and routing collapse.

A run has diverged when a later step's loss exceeds the first step's (the untrained model's) by more
than `DIVERGED_RISE` of it: training made the model worse than its random initialisation. This catches
a run that blows up within its first steps, before a running median exists to measure a spike against.

A spike is a step whose training loss lies more than `SPIKE_DEVIATIONS` robust deviations above the
median of the `BASELINE` steps before it, and at least `MIN_RISE` nats above that median. The robust
deviation is the batch-to-batch noise, estimated from the step-to-step changes of the `WINDOW` steps
before it (1.4826 x their median absolute deviation / sqrt 2, the standard deviation for Gaussian noise), so
ordinary noise does not count, one bad step cannot hide behind its own outlier, and the fall of a run
that still learns fast does not pass for noise (a spread of levels around a 50-step median would: early
in training it measures the trend, and hid the seed-11 spike in docs/quality.md). Only rises count:
while a run is learning, each loss lies below the median of the steps before it.

Routing has collapsed when an MoE layer sends (almost) every token to the same k experts: its load CV is
within `COLLAPSE_FRACTION` of the largest possible, sqrt(E/k - 1). The bound scales with the number of
experts: with the other experts sharing the rest evenly, it is the busiest k taking at least
(k + 0.95 (E - k)) / E of the tokens, 97.5% for 2 experts, 95.6% for 8, top-1. For those steps the layer
is a dense FFN of k experts while the others learn nothing. It makes a row unstable when it lasted: at
least `COLLAPSE_STEPS` collapsed steps and either `COLLAPSE_SHARE` of the run's steps or a collapsed
step in its last `COLLAPSE_TAIL`. A shorter episode early in training that the router recovered from is
a tilt, not a lasting loss: top-1 over 2 experts, where one logit difference decides every token, tips
that way in a third of seeds within the first 80 steps (97-100% of tokens on one expert for 6-14 steps)
and 8 experts in none of 6, and a run behind its siblings after such an episode is marked `stalled`.

A run that stalls is only visible against its siblings (the other quality rows of the run with the same
shape, budget and text), so `stalled` is applied after loading (`harness.analysis.mark_stalled`). A row
has stalled when its held-out loss ended more than `STALL_GAP` nats above its siblings' median and its
smoothed training loss ended where its siblings' median curve already was at or before `STALL_AT` of the
budget: it lost a quarter or more of its steps, on the byte-level plateau or behind a collapsed router.
It is a "plateau" when its training loss was still flat over the last quarter of the budget (fell less
than `PLATEAU_FALL`), else "lagging".
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Optional

WINDOW = 100
BASELINE = 10
MIN_HISTORY = 10
SPIKE_DEVIATIONS = 6.0
MIN_RISE = 0.1
MAD_TO_STD = 1.4826
DIVERGED_RISE = 0.1
STALL_GAP = 0.1
STALL_AT = 0.75
PLATEAU_FALL = 0.05
SMOOTHING = 25
COLLAPSE_FRACTION = 0.95
COLLAPSE_STEPS = 5
COLLAPSE_SHARE = 0.02
COLLAPSE_TAIL = 0.1


@dataclass(frozen=True)
class Spike:
    step: int
    loss: float
    median: float
    deviations: float  # robust deviations above the running median

    def describe(self) -> str:
        return (f"loss spike at step {self.step}: {self.deviations:.1f} robust deviations above the running median "
                f"({self.loss:.3f} vs {self.median:.3f} nats)")


def spikes(losses: list[float], window: int = WINDOW, threshold: float = SPIKE_DEVIATIONS,
           min_rise: float = MIN_RISE, min_history: int = MIN_HISTORY, baseline: int = BASELINE) -> list[Spike]:
    """Every step whose loss is a spike against the finite losses before it: its rise above the median of
    the last `baseline` of them, in units of the noise of the last `window`."""
    found = []
    for i in range(min_history, len(losses)):
        value = losses[i]
        history = [v for v in losses[max(0, i - window):i] if math.isfinite(v)]
        if not math.isfinite(value) or len(history) < min_history:
            continue
        median = statistics.median(history[-baseline:])
        rise = value - median
        if rise < min_rise:
            continue
        changes = [b - a for a, b in zip(history, history[1:])]
        trend = statistics.median(changes)
        spread = MAD_TO_STD * statistics.median(abs(c - trend) for c in changes) / math.sqrt(2)
        deviations = rise / spread if spread > 0 else math.inf
        if deviations > threshold:
            found.append(Spike(i, value, median, deviations))
    return found


def max_load_cv(num_experts: int, k: int) -> float:
    """The load CV when every token picks the same k of E experts: k experts at T each, E - k at 0."""
    return math.sqrt(num_experts / k - 1) if k < num_experts else 0.0


def collapse(records: list[dict[str, Any]], limit: float) -> Optional[str]:
    """A lasting routing collapse in any MoE layer (per-layer `load_cv_l<i>` columns), or None."""
    if limit <= 0:
        return None
    layers = sorted({key for r in records for key in r if key.startswith("load_cv_l")}, key=lambda k: int(k[9:]))
    last = max((r["step"] for r in records), default=0)
    tail = last - COLLAPSE_TAIL * (last + 1)
    for key in layers:
        hits = [r["step"] for r in records if r.get(key) is not None and r[key] >= COLLAPSE_FRACTION * limit]
        lasting = len(hits) >= COLLAPSE_SHARE * len(records) or any(step > tail for step in hits)
        if len(hits) >= COLLAPSE_STEPS and lasting:
            peak = max(r[key] for r in records if r.get(key) is not None)
            return (f"routing collapse at step {hits[0]}: MoE layer {key[9:]} sent almost every token to the same "
                    f"experts (load CV {peak:.2f}, at most {limit:.2f}) for {len(hits)} steps")
    return None


def assess(steps: Iterable[dict[str, Any]], val_loss: Optional[float] = None,
           load_cv_limit: float = 0.0) -> dict[str, Any]:
    """`unstable` and `unstable_reason` of a training row from its per-step records (`step` i at position i).

    `load_cv_limit` is `max_load_cv(E, k)` for an MoE with token-choice routing, else 0 (no collapse check).
    A non-finite or diverged loss is reported alone; spikes and collapse together.
    """
    records = list(steps)
    if not records:
        return {"unstable": None, "unstable_reason": "not assessed: the workload keeps no per-step losses"}
    losses = [float(r["loss"]) for r in records]
    for record, value in zip(records, losses):
        if not math.isfinite(value):
            return {"unstable": True, "unstable_reason": f"non-finite loss at step {record['step']} ({value})"}
    if val_loss is not None and not math.isfinite(val_loss):
        return {"unstable": True, "unstable_reason": f"non-finite held-out loss ({val_loss})"}
    first = losses[0]
    above = [i for i, v in enumerate(losses) if v > first * (1 + DIVERGED_RISE) + MIN_RISE]
    if above:
        worst = max(above, key=lambda i: losses[i])
        return {"unstable": True, "unstable_reason": (
            f"diverged at step {above[0]}: loss {losses[above[0]]:.3f} above the first step's {first:.3f} nats "
            f"(highest {losses[worst]:.3f} at step {worst})")}
    reasons = []
    found = spikes(losses)
    if found:
        worst = max(found, key=lambda s: s.deviations)
        reasons.append(worst.describe() + (f"; {len(found)} spikes in all" if len(found) > 1 else ""))
    collapsed = collapse(records, load_cv_limit)
    if collapsed:
        reasons.append(collapsed)
    return {"unstable": bool(reasons), "unstable_reason": "; ".join(reasons) or None}


def smoothed(losses: list[float], window: int = SMOOTHING) -> list[float]:
    """Running median over the last `window` steps (batch-to-batch noise out, trends kept)."""
    return [statistics.median(losses[max(0, i - window + 1):i + 1]) for i in range(len(losses))]


def stalled(losses: list[float], val_loss: float, siblings: list[tuple[list[float], float]]) -> Optional[str]:
    """Why a quality row stalled relative to its siblings ((training losses, val_loss) each), or None.

    Needs at least one sibling with a curve of the same length and finite losses everywhere.
    """
    n = len(losses)
    others = [(curve, v) for curve, v in siblings if len(curve) == n and math.isfinite(v)]
    if n < 4 * SMOOTHING or not others or not math.isfinite(val_loss) or not all(map(math.isfinite, losses)):
        return None
    median_val = statistics.median(v for _, v in others)
    gap = val_loss - median_val
    if gap <= STALL_GAP:
        return None
    own = smoothed(losses)
    median_curve = [statistics.median(step) for step in zip(*(smoothed(c) for c, _ in others))]
    reached = next((i for i, v in enumerate(median_curve) if v <= own[-1]), None)
    if reached is None or reached > STALL_AT * n:
        return None
    fell = own[(3 * n) // 4] - own[-1]
    kind = "plateau" if fell < PLATEAU_FALL else "lagging"
    return (f"{kind}: val_loss {val_loss:.3f} ended {gap:.2f} nats above its siblings' median {median_val:.3f}; "
            f"its training loss ended at {own[-1]:.3f}, where its siblings were at step {reached} of {n}, "
            f"and fell {fell:.3f} nats over the last quarter")
