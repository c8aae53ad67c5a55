"""The one verdict rule, on intervals whose right answer is known."""
import math

import pandas as pd
import pytest

from harness.verdict import (
    CONTENDED,
    FASTER,
    NO_INTERVAL,
    ONE_PROCESS,
    SAME,
    SLOWER,
    UNRELIABLE,
    UNSTABLE,
    WIDE,
    Disturbance,
    decide,
    disturbances,
    fewest_processes,
    unreliable_sentence,
)


@pytest.mark.parametrize("low, high, expected", [
    (1.10, 1.30, FASTER),
    (0.40, 0.60, SLOWER),
    (0.98, 1.03, SAME),       # inside the band, includes 1
    (1.01, 1.03, SAME),       # excludes 1, but a change smaller than the band
    (0.80, 1.30, UNRELIABLE),  # includes 1, reaches past the band
    (1.02, 1.30, FASTER),     # excludes 1 and reaches past the band
])
def test_ratio_intervals(low, high, expected):
    verdict = decide((low + high) / 2, low, high, margin=0.05)
    assert verdict.verdict == expected
    assert (verdict.cause == WIDE) == (expected == UNRELIABLE)


def test_direction_and_words_follow_the_metric():
    """Lower is better for latency or loss; quality speaks of better/worse."""
    assert decide(0.5, 0.4, 0.6, higher_is_better=False).verdict == FASTER
    assert decide(0.5, 0.4, 0.6, higher_is_better=False, words=("better", "worse")).verdict == "better"
    assert decide(-0.1, -0.15, -0.05, scale="difference", higher_is_better=False, margin=0.01,
                  words=("better", "worse")).verdict == "better"
    assert decide(0.002, -0.004, 0.008, scale="difference", margin=0.01).verdict == SAME
    assert decide(0.01, -0.05, 0.08, scale="difference", margin=0.01).cause == WIDE
    with pytest.raises(ValueError):
        decide(1, 1, 1, scale="percent")


def test_a_disturbed_side_is_never_faster_or_slower():
    """The issue's 31x 'win': a tight interval far from 1, but one side was contended."""
    stalled = [Disturbance("baseline", CONTENDED, "cpu share 0.05 of 1 thread")]
    verdict = decide(31.1, 30.0, 32.0, disturbed=stalled)
    assert verdict.verdict == UNRELIABLE and verdict.cause == CONTENDED
    assert "cpu share 0.05" in verdict.reason and "baseline" in verdict.reason
    unstable = decide(0.5, 0.4, 0.6, disturbed=[Disturbance("MoE", UNSTABLE, "loss spike at step 40")])
    assert unstable.verdict == UNRELIABLE and unstable.cause == UNSTABLE


@pytest.mark.parametrize("low, high", [(None, 1.2), (math.nan, 1.2), (0.0, 1.2), (pd.NA, pd.NA)])
def test_no_interval_is_unreliable(low, high):
    verdict = decide(1.0, low, high)
    assert verdict.verdict == UNRELIABLE and verdict.cause == NO_INTERVAL


def test_one_process_per_side_is_judged_only_against_a_measured_aa_spread():
    """A tight single-process interval (an A/A pair of identical code measured 0.78x-0.91x) must not
    become 'slower': it omits the variation between processes. An A/A spread, which holds it, may."""
    lone = decide(0.84, 0.78, 0.91, processes=1)
    assert lone.verdict == UNRELIABLE and lone.cause == ONE_PROCESS
    assert decide(0.84, 0.78, 0.91, processes=2).verdict == SLOWER
    assert decide(0.84, 0.78, 0.91).verdict == SLOWER  # not a timing: the rule does not apply
    assert decide(0.84, 0.78, 0.91, processes=1, margin=0.05, margin_measured=True).verdict == SLOWER
    assert decide(0.84, 0.78, 0.91, processes=1, margin=0.30, margin_measured=True).verdict == SAME
    assert fewest_processes(2, 1.0) == 1 and fewest_processes(None, float("nan"), "3") == 3
    assert fewest_processes(pd.NA, None) is None
    sentence = unreliable_sentence([lone])
    assert "1 timed in one process per side" in sentence and "run.processes: 2" in sentence


def test_margin_from_an_aa_spread_moves_the_band():
    assert decide(1.08, 1.06, 1.10, margin=0.05).verdict == FASTER
    assert decide(1.08, 1.06, 1.10, margin=0.12).verdict == SAME


def test_disturbances_read_both_flags_and_tolerate_missing_columns():
    row = {"contended": True, "contention_reason": "load avg 3.9 on 2 cores", "unstable": pd.NA}
    found = disturbances(row, "MoE")
    assert [(d.kind, d.reason) for d in found] == [(CONTENDED, "load avg 3.9 on 2 cores")]
    assert disturbances({"dense_contended": "true", "dense_unstable": True, "dense_unstable_reason": "plateau"},
                        "baseline", prefix="dense_")[1].reason == "plateau"
    assert disturbances({"contended": False, "unstable": math.nan}, "MoE") == []
    assert disturbances({}, "MoE") == []


def test_unreliable_sentence_counts_causes_and_says_what_to_do():
    verdicts = [decide(1, 0.5, 2), decide(2, 1.5, 2.5, disturbed=[Disturbance("MoE", CONTENDED, "x")]),
                decide(2, 1.5, 2.5), None]
    sentence = unreliable_sentence(verdicts, load=3.9, cores=2)
    assert sentence.startswith("2 of 3 pairs unreliable")
    assert "load 3.9 on 2 cores" in sentence and "run.processes" in sentence
    assert unreliable_sentence([decide(2, 1.5, 2.5), None]) is None
    assert "interleave: true" not in sentence
    assert "interleave: true" in unreliable_sentence(verdicts, interleaved=False)
