"""Runs that differ in a run.* setting share no case id: compare and report A B match them on configuration."""
from harness.cli import main as cli
from harness.compare.matching import match_by_configuration, settings_diff
from harness.report import write_comparison
from harness.store import RunStore
from tests.test_compare import FP, latency_samples, row


def run_with(path, rows, threads):
    store = RunStore(path)
    store.write_meta({"suite": {"name": "nightly", "run": {"threads": threads, "batch_size": 8}}, "fingerprint": FP})
    store.append_records(store.journal, rows)
    store.write_tables()
    return path


def test_match_by_configuration_pairs_only_unambiguous_configurations():
    a = [row("a1", [0.01] * 5), row("a2", [0.01] * 5, num_experts=16)]
    b = [row("b1", [0.01] * 5), row("b2", [0.01] * 5, num_experts=16), row("b3", [0.01] * 5, num_experts=32)]
    assert match_by_configuration(a, b) == {("b1", "forward"): ("a1", "forward"), ("b2", "forward"): ("a2", "forward")}
    twice = [row("b1", [0.01] * 5), row("b9", [0.01] * 5)]  # the same configuration twice: no guess
    assert match_by_configuration(a, twice) == {}


def test_settings_diff_names_what_differs():
    assert settings_diff({"name": "x", "run": {"threads": 1, "seed": 0}}, {"name": "y", "run": {"threads": 2, "seed": 0}}) \
        == ["run.threads: 1 vs 2"]


def test_compare_and_report_match_runs_that_differ_in_threads(tmp_path, capsys):
    a = run_with(tmp_path / "a", [row("a1", latency_samples(0.010, seed=1)),
                                  row("a2", latency_samples(0.02, seed=2), num_experts=16)], threads=1)
    b = run_with(tmp_path / "b", [row("b1", latency_samples(0.010, seed=3)),
                                  row("b2", latency_samples(0.02, seed=4), num_experts=16)], threads=2)
    assert cli(["compare", str(b), "--baseline", str(a)]) == 0
    out = capsys.readouterr().out
    assert "compared: run.threads: 1 vs 2" in out and "a1" in out and "a2" in out and "new" not in out
    html = write_comparison(a, b, tmp_path / "cmp").read_text()
    assert "run.threads: 1 vs 2" in html and "2 results appear in both runs" in html
