"""The HTML report: self-contained, escaped, honest about what was not measured; tables and plots."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis import load, paired
from harness.cli import main as cli_main
from harness.report import comparison, write_report
from harness.report.plots import ratio_grid, ratio_heatmap
from harness.report.tables import headline
from tests.report_fixtures import case_id, make_run, rows

EVIL = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    extra = [{**rows()[-1], "case_id": "badbadbadbad", "status": "failed", "error": EVIL, "tokens_per_s": None}]
    run = make_run(tmp_path_factory.mktemp("run"), description=f"Sweep {EVIL} & more", extra_rows=extra)
    return run, write_report(run).read_text()


def test_report_is_one_self_contained_file_with_pngs(report):
    run, html = report
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["dropped_vs_capacity.png", "memory_estimate_vs_measured.png", "memory_vs_experts.png",
                    "throughput_ratio_heatmap.png", "throughput_vs_experts.png"]
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:|//)', html)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html


def test_suite_text_and_errors_cannot_inject_markup(report):
    _, html = report
    assert len(re.findall(r"<script\b", html)) == 1  # only the sorting script
    assert len(re.findall(r"<img\b", html)) == 5  # only the plots
    assert "Sweep &lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; more" in html
    failures = html[html.index('id="failures-table"'):]
    assert "&lt;img src=x onerror=alert(1)&gt;" in failures[: failures.index("</table>")]


def test_unmeasured_energy_is_explained_not_drawn(report):
    run, html = report
    assert not (run / "plots" / "energy_per_token.png").exists()
    assert "Not drawn: unavailable: no NVML (CPU run)." in html
    assert "Energy/token ratio" not in html
    assert "Quality (validation loss)</b>: not recorded by this run" in html


def test_measured_energy_and_quality_are_drawn(tmp_path):
    run = make_run(tmp_path, with_energy=True, with_quality=True)
    html = write_report(run).read_text()
    assert (run / "plots" / "energy_per_token.png").stat().st_size > 0
    assert (run / "plots" / "val_loss_pairs.png").stat().st_size > 0
    assert "Energy/token ratio" in html and "Quality ratio (val loss)" in html
    assert "Not drawn" not in html


def test_headline_marks_best_and_worst_per_workload(report):
    run, html = report
    df = load(run)
    table = headline(paired(df), df)
    marked = {(row[1].text, cls): row[0].sort for row, cls in zip(table.rows, table.row_classes) if cls}
    assert marked == {("train_step", "best"): "E2 k1 cf1", ("train_step", "worst"): "E8 k2 dropless",
                      ("forward", "best"): "E2 k1 cf1", ("forward", "worst"): "E8 k2 dropless"}
    best = next(row for row, cls in zip(table.rows, table.row_classes) if cls == "best")
    assert best[4].text == "1.12× [1.06, 1.19]" and best[4].cls == "better"
    oom = next(row for row in table.rows if row[0].sort == "E8 k2 cf1" and row[1].text == "train_step")
    assert oom[4].text == "—" and oom[-1].text == "oom"
    assert html.count('class="best"') == 2 and html.count('class="worst"') == 2


def test_heatmap_leaves_unmeasured_cells_blank_not_zero(report):
    run, _ = report
    df = load(run)
    pairs = paired(df)
    grid = ratio_grid(pairs, "forward", 1)
    assert list(grid.index) == ["cf1", "cf1.25", "dropless"] and list(grid.columns) == [2, 4, 8]
    assert np.isnan(grid.loc["dropless", 8])  # the timed-out case
    expected = pairs[(pairs["workload"] == "forward") & (pairs["top_k"] == 1) & (pairs["num_experts"] == 2)
                     & (pairs["capacity_factor"] == 1.25)]["throughput_ratio"].iloc[0]
    assert grid.loc["cf1.25", 2] == pytest.approx(expected)
    texts = [t.get_text() for ax in ratio_heatmap(pairs, df).figure.axes for t in ax.texts]
    assert texts.count("n/a") == 2 and "0.00" not in texts
    coloured = [t for t in texts if re.fullmatch(r"\d\.\d\d", t)]
    grey = [t for t in texts if re.fullmatch(r"\d\.\d\d\nunreliable", t)]
    assert len(coloured) + len(grey) == 34  # every measured cell is annotated
    unreliable = pairs[pairs["num_experts"].notna() & (pairs["verdict"] == "unreliable")]
    assert len(grey) == len(unreliable) > 0  # and never coloured when its verdict is unreliable


def test_failed_cases_listed_with_reasons(report):
    _, html = report
    failures = html[html.index('id="failures-table"'):]
    failures = failures[: failures.index("</table>")]
    assert "OutOfMemoryError: tried to allocate 2.0 GiB" in failures and "no result after 600 s" in failures
    assert failures.count("<tr") == 4  # header, oom, timeout and the failed row with markup in its error


def test_run_info_and_suite_yaml_shown(report):
    _, html = report
    for text in ("Synthetic CPU @ 2.0GHz", "2025-01-01T10:00:00+00:00", "Harness version", "moe.capacity_factor: [1.0, 1.25, null]"):
        assert text in html


def test_all_failed_run_still_renders(tmp_path):
    data = [{k: v for k, v in r.items() if k in ("case_id", "kind", "baseline", "matched_to", "workload", "num_experts",
                                                 "top_k", "capacity_factor", "d_ff")} for r in rows()]
    for r in data:
        r.update(status="failed", error="ImportError: no module named x")
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    html = write_report(tmp_path).read_text()
    assert "Not drawn: no case finished successfully." in html
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").glob("*.png"))


def test_comparison_changes(tmp_path):
    a = make_run(tmp_path / "a")
    b_rows = rows()
    for r in b_rows:  # run B is twice as fast everywhere
        for col in ("latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high"):
            r[col] = r[col] / 2 if r[col] is not None else None
        r["tokens_per_s"] = r["tokens_per_s"] * 2
    b = make_run(tmp_path / "b", extra_rows=[])
    pd.DataFrame(b_rows).to_csv(b / "results.csv", index=False)
    (b / "results.parquet").unlink()
    both = comparison.matched(load(a), load(b))
    ok = both[both["throughput_change"].notna()]
    assert len(ok) == 38 and np.allclose(ok["throughput_change"], 2.0)
    assert np.allclose(ok["throughput_change_ci_low"], 2.0 * 0.97 / 1.03)
    assert both.loc[both["case_id"] == case_id("E8 k2 cf1"), "throughput_change"].isna().any()


def test_cli_report_one_run_without_torch(tmp_path):
    run = make_run(tmp_path)
    code = ("import sys; from harness.cli import main; rc = main(['report', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'the report imported torch'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(run)], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"report: {run / 'report.html'}" in done.stdout and (run / "report.html").is_file()


def test_cli_compares_two_runs_and_rejects_bad_input(tmp_path, capsys):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", with_energy=True)
    assert cli_main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "Per-case change, run B / run A" in html and (tmp_path / "cmp" / "plots" / "throughput_b_vs_a.png").is_file()
    assert cli_main(["report", str(a), str(b)]) == 0 and (b / "compare-a" / "report.html").is_file()
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "no results.parquet or results.csv" in capsys.readouterr().err
    assert cli_main(["report", str(a), str(b), str(a)]) == 2


def test_noisy_timings_are_flagged_in_the_headline(tmp_path):
    data = rows()
    for r in data:
        if r["case_id"] == case_id("dense k2"):
            r["noisy"] = True
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    table = headline(paired(df), df)
    status = {(row[0].sort, row[1].text): row[-1].text for row in table.rows}
    assert status[("E2 k2 cf1", "forward")] == "ok, noisy"
    assert status[("E2 k1 cf1", "forward")] == "ok"


def test_comparison_warns_when_environments_differ(tmp_path):
    import json

    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert cli_main(["report", str(a), str(b), "--out", str(tmp_path / "same")]) == 0
    assert 'id="env-warning"' not in (tmp_path / "same" / "report.html").read_text()
    meta = json.loads((b / "run.json").read_text())
    meta["fingerprint"]["device_name"] = "NVIDIA H200"
    (b / "run.json").write_text(json.dumps(meta))
    assert cli_main(["report", str(a), str(b), "--out", str(tmp_path / "differ")]) == 0
    html = (tmp_path / "differ" / "report.html").read_text()
    assert 'id="env-warning"' in html and "device_name" in html


def test_heatmap_survives_a_top_k_missing_from_one_workload(tmp_path):
    data = [r for r in rows() if not (r["workload"] == "forward" and r.get("top_k") == 2)]
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    plot = ratio_heatmap(paired(df), df)
    assert plot.figure is not None and plot.missing is None
    titles = [ax.get_title() for ax in plot.figure.axes]
    assert "forward, top-k 2: not measured" in titles and "train_step, top-k 2" in titles


def test_report_lists_routing_per_layer(report):
    run, html = report
    layers = pd.read_csv(run / "routing_layers.csv")
    assert 'id="layers"' in html and f"{len(layers)} layer rows" in html
    section = html[html.index('id="layers"'):html.index('id="run"')]
    assert section.count("<tr") == len(layers) + 1  # header + one row per layer


def test_memory_estimate_plot_draws_estimate_against_net_peak_and_explains_its_absence(tmp_path):
    from harness.report.plots import memory_estimate_vs_measured

    df = load(make_run(tmp_path))
    plot = memory_estimate_vs_measured(paired(df), df)
    assert plot.figure is not None and plot.missing is None
    worst = max((42 + 8 * e) / (40 + 8 * e) for e in (0,))  # the dense rows: 42 / 40 MiB
    assert f"to {worst:.2f} over" in plot.caption
    older = df.drop(columns=["memory_estimate_bytes"])
    assert memory_estimate_vs_measured(paired(older), older).missing
