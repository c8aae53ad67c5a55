"""A busy or stalled machine must never produce a confident verdict: end-to-end runs whose
measurement the test disturbs on purpose (see tests/disturb.py), and the processes that make up a row."""
import json
import os
import shutil

import pandas as pd
import pytest

from harness import load, paired
from harness.cli import main
from harness.store import RunStore
from harness.verdict import CONTENDED, FASTER, SLOWER, UNRELIABLE
from tests.disturb import STALL_S

SUITE = """
name: disturbed
model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 4, top_k: 1, capacity_factor: 1.0, impl: loop}
run: {batch_size: 4, warmup: 1, repeats: 8, timeout_s: 120, device: cpu, measure_energy: false, processes: PROCESSES}
workloads: ["tests.disturb:forward"]
"""

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to a core (Linux)")


def _run(tmp_path, name, disturb, processes=1, command="run"):
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(SUITE.replace("PROCESSES", str(processes)))
    out = tmp_path / name
    env = dict(os.environ)
    if disturb:
        os.environ["HARNESS_TEST_DISTURB"] = disturb
    try:
        code = main([command, str(suite), "--out", str(out), "--no-report", "--quiet"])
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    return {
        "aa": _run(root, "aa", None, command="aa"),
        "busy": _run(root, "busy", "busy"),
        "stall": _run(root, "stall", f"stall:{root / 'stall.marker'}", processes=2),
    }


def _pair(out):
    pairs = paired(load(out))
    assert len(pairs) == 1
    return pairs.iloc[0]


def test_a_busy_loop_on_the_moe_side_makes_the_pair_unreliable(runs):
    """The MoE worker shares its core with a busy loop: it runs at about half speed, which without
    contention detection reads as a confident 'slower'. It must be contended and the pair unreliable."""
    df = load(runs["busy"])
    moe = df[df["kind"] == "moe"].iloc[0]
    dense = df[df["kind"] == "dense"].iloc[0]
    assert bool(moe["contended"]) and "cpu share" in moe["contention_reason"]
    assert moe["cpu_share"] < 0.8
    pair = _pair(runs["busy"])
    assert pair["verdict"] == UNRELIABLE and pair["verdict_cause"] == CONTENDED
    assert pair["verdict"] not in (FASTER, SLOWER)
    assert "MoE contended" in pair["verdict_reason"]
    del dense  # the baseline's own reading depends on the machine; only the disturbed side is asserted


def test_a_stalled_process_is_caught_although_its_samples_are_tight(runs):
    """One of the MoE case's two processes sleeps inside every step: tight, slow samples (not noisy).
    The row pools both processes; the stalled one's CPU share gives it away."""
    df = load(runs["stall"])
    row = df[df["kind"] == "moe"].iloc[0]  # the run's first job: its first process claimed the stall
    assert row["processes"] == 2 and bool(row["contended"]) and "process 1: cpu share" in row["contention_reason"]
    journal = {r["case_id"]: r for r in RunStore(runs["stall"]).rows()}
    first, second = (pd.Series(s) for s in journal[row["case_id"]]["samples_s"])
    assert first.median() > second.median() + 0.6 * STALL_S  # the stalled process is much slower than the other
    assert (first.quantile(0.75) - first.quantile(0.25)) / first.median() < 0.1  # and tight: not 'noisy'
    assert _pair(runs["stall"])["verdict"] == UNRELIABLE


def test_compare_against_a_contended_run_is_inconclusive_not_a_regression(runs, capsys):
    """The busy run's MoE case is ~2x slower than in the quiet A/A run: without contention detection
    compare would fail the build with a regression; it must exit 3 (inconclusive)."""
    code = main(["compare", str(runs["busy"]), "--baseline", str(runs["aa"]), "--allow-mismatch"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "inconclusive" in out


def test_aa_command_measures_identical_copies_as_pairs(runs, capsys):
    df = load(runs["aa"])
    assert set(df["baseline"].dropna()) == {"aa_copy"} and (df["kind"] == "moe").all()
    twin, original = df[df["baseline"] == "aa_copy"].iloc[0], df[df["baseline"].isna()].iloc[0]
    assert twin["matched_to"] == original["case_id"] and twin["case_id"] != original["case_id"]
    pairs = paired(df, "aa_copy")
    assert len(pairs) == 1 and pairs.iloc[0]["verdict"] not in (FASTER, SLOWER)


def test_rows_pool_processes_run_in_rounds_and_resume_between_them(runs, tmp_path):
    """Process 1 of every job runs before process 2 of any (A1 B1 A2 B2); an interrupted run resumes
    with the processes it lacks, keeping those it has."""
    journal = [json.loads(line) for line in (runs["stall"] / "rows.jsonl").read_text().splitlines()]
    assert [len(r["process_rows"]) for r in journal] == [1, 1, 2, 2]
    assert journal[0]["case_id"] == journal[2]["case_id"] != journal[1]["case_id"] == journal[3]["case_id"]
    frame = pd.read_csv(runs["stall"] / "results.csv")
    assert (frame["processes"] == 2).all() and "process_rows" not in frame and "samples_s" not in frame

    copy = tmp_path / "resumed"
    shutil.copytree(runs["stall"], copy)
    lines = (copy / "rows.jsonl").read_text().splitlines()
    (copy / "rows.jsonl").write_text("\n".join(lines[:2]) + "\n")  # interrupted after the first round
    assert main(["run", "--resume", str(copy), "--no-report", "--quiet"]) == 0
    rows = {r["case_id"]: r for r in RunStore(copy).rows()}
    before = {r["case_id"]: r for r in journal[:2]}
    for case_id, row in rows.items():
        assert len(row["samples_s"]) == 2 and row["samples_s"][0] == before[case_id]["samples_s"][0]
