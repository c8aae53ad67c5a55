"""The report and terminal summary lead with quality when a run measured it: the quality card and table
(Δval_loss and time-to-target speedup over seeds, coloured by verdict), loss curves with seed bands,
Pareto plots and the paired val_loss dot plot, from a synthetic seeded run with known curves."""
from __future__ import annotations

import re

import pytest

from harness.analysis import load, load_steps, paired
from harness.quality import replicates, to_target
from harness.report import write_report
from harness.summary import quality_table
from tests.quality_fixtures import DENSE_MS, MOE_MS, SCALE, STEPS, make_quality_run
from tests.test_report_browser import Opened, _assert_loaded_cleanly, browser  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_quality_run(tmp_path_factory.mktemp("quality") / "run")


def test_time_to_target_matches_the_closed_form(run):
    import math

    quality = to_target(paired(load(run)), load_steps(run))
    e8 = quality[(quality["num_experts"] == 8) & (quality["seed"] == 0)].iloc[0]
    # MoE of E8 reaches the dense final loss 1.5 + 2.5 exp(-100/40) where exp(-s/25) = exp(-100/40)
    exact = STEPS * SCALE[8] / SCALE["dense"]
    assert e8["steps_to_target"] == pytest.approx(exact, rel=0.03)  # linear between evaluations 10 apart
    assert e8["dense_steps_to_target"] == pytest.approx(STEPS)
    assert e8["time_speedup"] == pytest.approx(e8["step_speedup"] * DENSE_MS / MOE_MS)
    assert math.isnan(e8["energy_speedup"])  # not measured: empty, never 0
    e2 = quality[(quality["num_experts"] == 2) & (quality["seed"] == 0)].iloc[0]
    assert e2["step_speedup"] < 1 and e2["steps_to_target"] == pytest.approx(STEPS)


def test_report_leads_with_the_quality_card(run):
    html = write_report(run).read_text()
    assert html.index('id="quality"') < html.index('id="summary"')
    table = html[html.index('id="quality-table"'):]
    table = table[: table.index("</table>")]
    assert len(re.findall(r"<tr>|<tr ", table)) == 4  # header + 3 configurations
    assert table.count('class="better') >= 4 and table.count('class="worse') >= 2  # E4, E8 better; E2 worse
    card = html[html.index('id="quality"'): html.index('id="quality-table"')]
    assert "2 better</span>, <span class=\"bad\">1 worse" in card
    assert "Best on quality: <b>E8 k1 cf1.25</b>" in card and "Worst on quality: <b>E2 k1 cf1.25</b>" in card
    directions = html[html.index('id="directions-table"'):]
    directions = directions[: directions.index("</table>")]
    assert "E8 vs E2" in directions and ">supported<" in directions  # D1, with the seeds' interval
    for name in ("quality_curves", "quality_pareto", "val_loss_pairs", "learning_curves"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 10_000
    assert not (run / "plots" / "quality_vs_train_flops.png").exists()


def test_an_unstable_seed_withholds_its_configurations_verdict(tmp_path):
    run = make_quality_run(tmp_path / "run", unstable="E8 seed 1")
    by_config = replicates(to_target(paired(load(run)), load_steps(run)))
    e8 = by_config[by_config["num_experts"] == 8].iloc[0]
    assert e8["quality_verdict"] == "unreliable" and "loss spike" in e8["quality_verdict_reason"]
    html = write_report(run).read_text()
    card = html[html.index('id="quality"'): html.index('id="quality-table"')]
    assert "Best on quality: <b>E4 k1 cf1.25</b>" in card


def test_one_seed_gives_no_verdict(tmp_path):
    run = make_quality_run(tmp_path / "run", seeds=(0,))
    html = write_report(run).read_text()
    card = html[html.index('id="quality"'): html.index('id="quality-table"')]
    assert "3 unreliable of 3" in card and "none is called best or worst" in card


def test_terminal_summary_shows_val_loss_and_speedups(run):
    table = quality_table(load(run), load_steps(run))
    assert list(table["configuration"]) == ["E2 k1 cf1.25", "E4 k1 cf1.25", "E8 k1 cf1.25"]
    assert list(table["quality"]) == ["worse", "better", "better"]
    assert (table["time_x"].iloc[1:] > 1).all() and table["time_x"].iloc[0] < 1
    assert table["val_loss"].notna().all() and table["dense_val_loss"].notna().all()


@pytest.mark.browser
def test_quality_report_in_chromium(browser, run):  # noqa: F811
    report = write_report(run)
    opened = Opened(browser, report)
    _assert_loaded_cleanly(opened, len(list((run / "plots").glob("*.png"))))
    page = opened.page
    assert page.locator("#quality-table tbody tr").count() == 3
    assert page.locator("#quality-table").is_visible()
    assert page.locator("#plot-quality_curves img").is_visible()
    page.close()
