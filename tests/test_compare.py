"""compare: regressions need a large AND real change on undisturbed runs; inconclusive otherwise; status
changes, environments, baselines, CLI."""
import json
from pathlib import Path

import numpy as np
import pytest

from harness import compare as cmp
from harness.cli import main as cli
from harness.metrics.statistics import summarize
from harness.store import RunStore

FP = {"device_name": "cpu", "device_count": 0, "cpu_model": "Test CPU", "torch": "2.13.0", "cuda": None,
      "threads": 2, "hostname": "a", "git_commit": "abc123"}
TOKENS = 512


def latency_samples(median_s: float, rel_noise: float = 0.02, n: int = 20, seed: int = 0, processes: int = 2):
    """`processes` lists of `n` steps around `median_s` (a single process's interval is never judged
    without an A/A spread); `processes=1` gives one flat list, as older runs stored."""
    rng = np.random.default_rng(seed)
    groups = [list(median_s * (1 + rel_noise * rng.standard_normal(n))) for _ in range(processes)]
    return groups[0] if processes == 1 else groups


def row(case_id, samples, workload="forward", status="ok", memory=100e6, energy=None, energy_source=None, **extra):
    base = {"case_id": case_id, "workload": workload, "status": status, "kind": "moe", "num_experts": 8, "top_k": 2,
            "capacity_factor": 1.0, "suite": "nightly"}
    if status != "ok":
        return {**base, "error": "boom", **extra}
    stats = summarize(samples)
    return {**base, "tokens_per_s": TOKENS / stats.median, "latency_ms_median": stats.median * 1e3,
            "latency_ms_ci_low": stats.ci_low * 1e3, "latency_ms_ci_high": stats.ci_high * 1e3,
            "latency_ms_iqr": stats.iqr * 1e3, "repeats": stats.n, "peak_memory_bytes": memory,
            "memory_source": "peak_rss", "energy_j_per_token": energy,
            "energy_source": energy_source or ("rapl" if energy else "unavailable: no meter"),
            "samples_s": list(samples), **extra}


def make_run(path: Path, rows, fingerprint=FP, suite="nightly") -> Path:
    store = RunStore(path)
    store.write_meta({"suite": {"name": suite}, "fingerprint": fingerprint})
    store.append_records(store.journal, rows)
    store.write_tables()
    return path


def run_cli(*argv) -> int:
    return cli(["compare", *map(str, argv)])


def findings(base: Path, cur: Path, **kw):
    return cmp.compare(cmp.load_results(base), cmp.load_results(cur), **kw)


def verdict(found, metric="latency_ms_median", case="c1", workload="forward"):
    [f] = [f for f in found if f.metric == metric and f.case_id == case and f.workload == workload]
    return f


@pytest.fixture
def base_run(tmp_path):
    return make_run(tmp_path / "base", [row("c1", latency_samples(0.010, seed=1)),
                                       row("c2", latency_samples(0.020, seed=2), workload="train_step")])


def test_injected_30_percent_slowdown_is_a_regression(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.013, seed=3)),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")])
    assert run_cli(cur, "--baseline", base_run) == 1
    found = findings(base_run, cur)
    latency, throughput = verdict(found), verdict(found, "tokens_per_s")
    assert latency.verdict == throughput.verdict == cmp.REGRESSION
    assert latency.change == pytest.approx(0.30, abs=0.03) and 1.2 < latency.ci_low < latency.ci_high < 1.4
    assert latency.test == "hierarchical 95% CI, processes 2/2"
    assert throughput.change == pytest.approx(1 / 1.3 - 1, abs=0.03)
    assert verdict(found, case="c2", workload="train_step").verdict == cmp.UNCHANGED
    assert latency.note == ""  # 2% noise is not flagged as noisy
    out = capsys.readouterr().out
    assert "noisy timing" not in out
    assert out.strip().splitlines()[-1].startswith(
        "REGRESSION (threshold 10%, no A/A spread measured; 95% intervals): 2 regression")
    assert found[0].verdict == cmp.REGRESSION  # most severe first


def test_same_distribution_resampled_is_clean(tmp_path, base_run):
    for seed in range(5):
        cur = make_run(tmp_path / f"cur{seed}", [row("c1", latency_samples(0.010, seed=10 + seed)),
                                                row("c2", latency_samples(0.020, seed=20 + seed), workload="train_step")])
        assert run_cli(cur, "--baseline", base_run, "--format", "csv") == 0
        assert {f.verdict for f in findings(base_run, cur)} == {cmp.UNCHANGED}


def test_small_change_is_below_threshold_even_when_significant(tmp_path):
    base = make_run(tmp_path / "base", [row("c1", latency_samples(0.010, rel_noise=0.005, seed=1))])
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.0105, rel_noise=0.005, seed=2))])
    f = verdict(findings(base, cur))
    assert f.ci_low > 1 and f.change == pytest.approx(0.05, abs=0.01)  # real, but small
    assert f.verdict == cmp.UNCHANGED
    assert run_cli(cur, "--baseline", base) == 0
    assert verdict(findings(base, cur, threshold=0.02)).verdict == cmp.REGRESSION  # the threshold is what held it back


def test_big_but_noisy_change_is_inconclusive_not_failed_nor_passed(tmp_path, capsys):
    """Too noisy to tell whether it regressed: neither exit 1 (it may be noise) nor exit 0 (it may be
    real), but 3."""
    noisy = [0.005, 0.010, 0.020, 0.008, 0.015, 0.030]
    base = make_run(tmp_path / "base", [row("c1", [noisy, noisy[::-1]])])
    cur = make_run(tmp_path / "cur", [row("c1", [[s * 1.3 for s in reversed(noisy)], [s * 1.3 for s in noisy]])])
    f = verdict(findings(base, cur))
    assert f.change == pytest.approx(0.30, abs=0.01) and f.ci_low < 1 < f.ci_high
    assert f.verdict == cmp.INCONCLUSIVE and "too wide to tell" in f.note and "noisy timing: IQR/median" in f.note
    assert run_cli(cur, "--baseline", base) == 3
    out = capsys.readouterr().out
    assert "warning: 1 of 1 timed cases had noisy timing" in out and out.strip().splitlines()[-1].startswith("INCONCLUSIVE")
    assert run_cli(cur, "--baseline", base, "--format", "json") == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["noisy_cases"] == 1 and doc["inconclusive"] is True and doc["exit_code"] == 3


def test_improvement_is_reported(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.007, seed=5)),
                                     row("c2", latency_samples(0.020, seed=6), workload="train_step")])
    assert run_cli(cur, "--baseline", base_run) == 0
    assert verdict(findings(base_run, cur)).verdict == cmp.IMPROVEMENT
    assert "improvement" in capsys.readouterr().out


def test_few_samples_decide_by_their_interval(tmp_path):
    """Single-process runs: judged only with an A/A spread (which holds the variation between processes)."""
    base = make_run(tmp_path / "base", [row("c1", [0.0100, 0.0101, 0.0099]), row("c2", [0.010, 0.013, 0.008])])
    cur = make_run(tmp_path / "cur", [row("c1", [0.0130, 0.0131, 0.0129]), row("c2", [0.013, 0.010, 0.016])])
    lone = verdict(findings(base, cur))
    assert lone.verdict == cmp.INCONCLUSIVE and "one worker process per side" in lone.note
    found = findings(base, cur, aa_measured=True)
    apart, overlap = verdict(found), verdict(found, case="c2")
    assert apart.ci_low > 1.1 and apart.verdict == cmp.REGRESSION
    assert overlap.ci_low < 1 < overlap.ci_high and overlap.verdict == cmp.INCONCLUSIVE


def test_run_without_journal_uses_results_table_and_intervals(tmp_path, base_run):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.013, seed=3)),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")])
    (cur / "rows.jsonl").unlink()
    f = verdict(findings(base_run, cur))
    assert f.test == "box of the two 95% CIs (no samples)" and f.verdict == cmp.REGRESSION and f.label == "moe E8 k2 cf1"
    assert run_cli(cur, "--baseline", base_run) == 1


def test_missing_and_failed_cases_are_regressions(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", [], status="oom")])
    assert run_cli(cur, "--baseline", base_run) == 1
    found = findings(base_run, cur)
    by_case = {f.case_id: f for f in found}
    assert by_case["c1"].verdict == cmp.FAILED and "oom: boom" in by_case["c1"].note
    assert by_case["c2"].verdict == cmp.MISSING
    assert len(found) == 2  # no metric lines for a case that did not run
    assert "notes:" in capsys.readouterr().out


def test_failed_before_and_new_cases_do_not_fail(tmp_path):
    base = make_run(tmp_path / "base", [row("c1", latency_samples(0.01)), row("c2", [], status="timeout"),
                                       row("c3", [], status="failed")])
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.01, seed=9)), row("c2", [], status="timeout"),
                                     row("c3", latency_samples(0.01)), row("c4", latency_samples(0.01))])
    by_case = {f.case_id: f.verdict for f in findings(base, cur) if f.metric == "status"}
    assert by_case == {"c2": cmp.STILL_FAILING, "c3": cmp.FIXED, "c4": cmp.NEW}
    assert run_cli(cur, "--baseline", base) == 0


def test_memory_uses_threshold_alone(tmp_path):
    base = make_run(tmp_path / "base", [row("c1", latency_samples(0.01), memory=100e6),
                                       row("c2", latency_samples(0.01), memory=100e6)])
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.01, seed=4), memory=120e6),
                                     row("c2", latency_samples(0.01, seed=5), memory=105e6)])
    found = findings(base, cur)
    grew = verdict(found, "peak_memory_bytes")
    assert grew.verdict == cmp.REGRESSION and grew.test == "threshold only" and grew.change == pytest.approx(0.2)
    assert verdict(found, "peak_memory_bytes", case="c2").verdict == cmp.UNCHANGED
    assert verdict(found).verdict == cmp.UNCHANGED


def test_energy_compared_only_when_both_sides_measured_it_the_same_way(tmp_path):
    base = make_run(tmp_path / "base", [row("c1", latency_samples(0.01), energy=1e-3), row("c2", latency_samples(0.01)),
                                       row("c3", latency_samples(0.01), energy=1e-3),
                                       row("c4", latency_samples(0.01), energy=1e-3, energy_source="nvml_counter")])
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.01, seed=7), energy=1.3e-3),
                                     row("c2", latency_samples(0.01, seed=8)),
                                     row("c3", latency_samples(0.01, seed=9)),
                                     row("c4", latency_samples(0.01, seed=6), energy=1e-3)])
    found = findings(base, cur)
    assert verdict(found, "energy_j_per_token").verdict == cmp.REGRESSION
    assert not [f for f in found if f.case_id == "c2" and f.metric == "energy_j_per_token"]
    unmeasured = verdict(found, "energy_j_per_token", case="c3")
    assert unmeasured.verdict == cmp.NOT_COMPARED and "unavailable: no meter" in unmeasured.note
    other_meter = verdict(found, "energy_j_per_token", case="c4")
    assert other_meter.verdict == cmp.NOT_COMPARED and "nvml_counter" in other_meter.note


def test_mismatched_environments_refused_unless_allowed(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.010, seed=3)),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")],
                   fingerprint={**FP, "threads": 16, "hostname": "b"})
    assert run_cli(cur, "--baseline", base_run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threads (2 vs 16)" in err and "hostname" not in err
    assert run_cli(cur, "--baseline", base_run, "--allow-mismatch") == 0
    captured = capsys.readouterr()
    assert "threads" in captured.err and "environments differ" in captured.out
    other_host = make_run(tmp_path / "host", [row("c1", latency_samples(0.010, seed=3))], fingerprint={**FP, "hostname": "b"})
    assert run_cli(other_host, "--baseline", base_run) == 1  # c2 missing; hostname is not a comparable key


def test_run_without_fingerprint_is_refused(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.010, seed=3))], fingerprint=None)
    assert run_cli(cur, "--baseline", base_run) == 2
    assert "no environment fingerprint" in capsys.readouterr().err


def test_save_baseline_then_compare_with_itself_is_clean(tmp_path, base_run, capsys):
    path = tmp_path / "baselines" / "nightly-cpu.json"
    assert run_cli(base_run, "--save-baseline", path) == 0
    assert "saved 2 cases of suite nightly" in capsys.readouterr().out
    text = path.read_text()
    doc = json.loads(text)
    assert doc["format"] == "moe-harness-baseline" and doc["suite"] == "nightly" and doc["fingerprint"] == FP
    assert sum(line.strip().startswith('{"case_id"') for line in text.splitlines()) == 2  # one line per case
    stored = {c["case_id"]: c for c in doc["cases"]}
    original = RunStore(base_run).rows()[0]
    assert doc["version"] == 2 and len(stored["c1"]["samples_ms"]) == 2  # one list per process
    assert stored["c1"]["samples_ms"][1] == pytest.approx([s * 1e3 for s in original["samples_s"][1]], rel=1e-5)
    assert "energy_j_per_token" not in stored["c1"]  # missing stays missing, never 0

    assert run_cli(base_run, "--baseline", path, "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["regression"] is False and set(report["summary"]) == {"unchanged"}
    assert all(f["ci_low"] < 1 < f["ci_high"] for f in report["findings"] if f["metric"] == "latency_ms_median")
    # the file and the folder are interchangeable as baselines
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.013, seed=3))])
    from_file, from_dir = findings(path, cur), findings(base_run, cur)
    assert [(f.case_id, f.metric, f.verdict) for f in from_file] == [(f.case_id, f.metric, f.verdict) for f in from_dir]


def test_save_baseline_keeps_failures_and_refuses_empty_runs(tmp_path, capsys):
    mixed = make_run(tmp_path / "mixed", [row("c1", latency_samples(0.01)), row("c2", [], status="oom")])
    assert run_cli(mixed, "--save-baseline", tmp_path / "b.json") == 0
    assert "did not finish ok" in capsys.readouterr().err
    assert {c["status"] for c in json.loads((tmp_path / "b.json").read_text())["cases"]} == {"ok", "oom"}
    broken = make_run(tmp_path / "broken", [row("c1", [], status="failed")])
    assert run_cli(broken, "--save-baseline", tmp_path / "x.json") == 2
    assert not (tmp_path / "x.json").exists()


def test_cli_formats_and_usage_errors(tmp_path, base_run, capsys):
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.013, seed=3)),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")])
    assert run_cli(cur, "--baseline", base_run, "--format", "markdown") == 1
    md = capsys.readouterr().out
    assert md.startswith("**REGRESSION") and "| c1 moe E8 k2 cf1 | forward | latency ms |" in md and "**regression** |" in md
    assert run_cli(cur, "--baseline", base_run, "--format", "csv") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",")[:4] == ["case_id", "label", "workload", "metric"] and len(lines) == 1 + 6

    for argv, message in [
        ((cur,), "needs --baseline"),
        ((cur, "--baseline", base_run, "--save-baseline", tmp_path / "x.json"), "not both"),
        ((tmp_path / "nope", "--baseline", base_run), "no such run folder"),
        ((cur, "--baseline", base_run, "--threshold", "0"), "--threshold"),
        ((cur, "--baseline", base_run, "--alpha", "2"), "--alpha"),
    ]:
        assert run_cli(*argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()  # reading never creates folders

    bad = tmp_path / "bad.json"
    bad.write_text('{"cases": []}')
    assert run_cli(cur, "--baseline", bad) == 2 and "not a moe-harness baseline" in capsys.readouterr().err
    other = make_run(tmp_path / "other", [row("zz", latency_samples(0.01))], suite="smoke")
    assert run_cli(other, "--baseline", base_run) == 2
    assert "wrong reference?" in capsys.readouterr().err


def test_one_process_per_side_needs_no_scipy(tmp_path, monkeypatch):
    """scipy's t quantiles only widen intervals over several processes; one process is a plain bootstrap."""
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)  # import fails as if scipy were absent
    def lone(median_s, seed):
        return latency_samples(median_s, seed=seed, processes=1)

    base = make_run(tmp_path / "base", [row("c1", lone(0.010, 1)), row("c2", lone(0.020, 2), workload="train_step")])
    cur = make_run(tmp_path / "cur", [row("c1", lone(0.013, 3)), row("c2", lone(0.020, 4), workload="train_step")])
    found = findings(base, cur, aa_measured=True)
    assert verdict(found).verdict == cmp.REGRESSION
    assert verdict(found, case="c2", workload="train_step").verdict == cmp.UNCHANGED


def test_the_stored_nightly_baseline_has_every_nightly_case():
    """Case ids hash the settings that differ from their defaults, so adding a setting does not orphan the
    stored baseline; editing suites/nightly.yaml must come with a refreshed baseline."""
    from harness.suite import load_suite
    from harness.sweep import expand

    stored = {(c["case_id"], c["workload"]) for c in json.loads(Path("baselines/nightly-cpu.json").read_text())["cases"]}
    suite = load_suite("suites/nightly.yaml")
    assert {(case.id, w) for case in expand(suite) for w in suite.workloads} == stored


def _processes(median_s, levels, seed, n=15):
    """Samples of one case from several processes, each at its own level (a between-process spread)."""
    return [latency_samples(median_s * level, rel_noise=0.01, n=n, seed=seed + i) for i, level in enumerate(levels)]


def test_processes_that_disagree_make_a_slowdown_inconclusive(tmp_path):
    """Each side's steps are tight, but its two processes differ by 25%: the step-only view (and
    Mann-Whitney on pooled steps) calls a 15% slowdown significant; across processes it is not decidable."""
    base = make_run(tmp_path / "base", [row("c1", _processes(0.010, (0.9, 1.1), seed=1))])
    cur = make_run(tmp_path / "cur", [row("c1", _processes(0.0115, (0.9, 1.1), seed=5))])
    f = verdict(findings(base, cur))
    assert f.change == pytest.approx(0.15, abs=0.03) and f.test == "hierarchical 95% CI, processes 2/2"
    assert f.ci_low < 1 < f.ci_high and f.verdict == cmp.INCONCLUSIVE
    agree = make_run(tmp_path / "agree", [row("c1", _processes(0.0115, (1.0, 1.0), seed=5))])
    same = make_run(tmp_path / "same", [row("c1", _processes(0.010, (1.0, 1.0), seed=1))])
    assert verdict(findings(same, agree)).verdict == cmp.REGRESSION  # processes that agree: decided


def test_a_contended_side_is_inconclusive_never_a_regression(tmp_path, base_run, capsys):
    busy = {"contended": True, "contention_reason": "cpu share 0.45 of 1 thread"}
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.020, seed=3), **busy),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")])
    found = findings(base_run, cur)
    f = verdict(found)
    assert f.verdict == cmp.INCONCLUSIVE and "current run contended (cpu share 0.45" in f.note
    assert verdict(found, case="c2", workload="train_step").verdict == cmp.UNCHANGED
    assert run_cli(cur, "--baseline", base_run) == 3
    assert "exit 3" in capsys.readouterr().out
    oom = make_run(tmp_path / "oom", [row("c1", latency_samples(0.020, seed=3), **busy), row("c2", [], status="oom",
                                                                                            workload="train_step")])
    assert run_cli(oom, "--baseline", base_run) == 1  # a failure is still a regression


def test_aa_spread_raises_the_threshold(tmp_path, base_run, capsys):
    """A 13% slowdown is a regression at a 10% threshold, but not on a machine whose identical copies
    already differ by 20% (the run's A/A calibration)."""
    cur = make_run(tmp_path / "cur", [row("c1", latency_samples(0.0113, rel_noise=0.005, seed=3)),
                                     row("c2", latency_samples(0.020, seed=4), workload="train_step")])
    assert run_cli(cur, "--baseline", base_run) == 1
    capsys.readouterr()
    meta = json.loads((cur / "run.json").read_text())
    (cur / "run.json").write_text(json.dumps({**meta, "aa": {"spread": 0.20}}))
    assert run_cli(cur, "--baseline", base_run) != 1
    assert "A/A spread 20.0%" in capsys.readouterr().out
    aa_run = make_run(tmp_path / "aa", [row("c1", latency_samples(0.01))])
    meta = json.loads((aa_run / "run.json").read_text())
    (aa_run / "run.json").write_text(json.dumps({**meta, "aa": {"spread": 0.20}}))
    (cur / "run.json").write_text(json.dumps(meta))
    assert run_cli(cur, "--baseline", base_run, "--aa", aa_run) != 1
    assert run_cli(cur, "--baseline", base_run, "--aa", base_run) == 2  # no A/A spread there


def test_version_1_baselines_still_load(tmp_path):
    base_run = make_run(tmp_path / "base", [row("c1", latency_samples(0.010, seed=1, processes=1))])
    path = tmp_path / "v2.json"
    cmp.save_reference(cmp.load_results(base_run), path)
    doc = json.loads(path.read_text())
    doc["version"] = 1
    for case in doc["cases"]:
        case["samples_ms"] = case["samples_ms"][0]  # version 1: one flat list
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    old, new = cmp.load_results(tmp_path / "v1.json"), cmp.load_results(path)
    assert old.cases == new.cases
