"""The report opened in a real headless Chromium (Debian's `chromium`, driven by Playwright; no download).

Skips only when chromium or playwright is not installed here; CI sets HARNESS_REQUIRE_BROWSER=1 so it
must run there. Asserts no console errors and no network requests, the headline table shows, every
plot image decodes (non-zero natural size), tables sort, and saves a screenshot next to the report.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.report import write_comparison, write_report
from tests.report_fixtures import make_run

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HARNESS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

TINY_REAL_SUITE = """\
name: report-browser
description: Tiny real run for the browser test <b>must stay plain text</b>
model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1, capacity_factor: 1.0, impl: loop}
run: {batch_size: 2, warmup: 1, repeats: 3, timeout_s: 120, device: cpu, processes: 1}
workloads: [forward]
sweep: {grid: {moe.num_experts: [2, 4]}}
"""


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing_browser()
    if reason:
        if os.environ.get("HARNESS_REQUIRE_BROWSER"):
            pytest.fail(f"HARNESS_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Opened:
    """A report page plus everything it logged or requested."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1366, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def images(self) -> list[dict]:
        return self.page.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,"
            " done: i.complete}))")

    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("data:", "file:"))]


def _assert_loaded_cleanly(opened: Opened, n_images: int) -> None:
    assert opened.errors == []
    assert opened.external_requests() == []
    images = opened.images()
    assert len(images) == n_images
    for image in images:
        assert image["done"] and image["w"] > 0 and image["h"] > 0, image


def test_real_run_report_in_chromium(browser, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(TINY_REAL_SUITE)
    run = tmp_path / "run"
    cli_main(["run", str(suite), "--out", str(run), "--no-report", "--quiet", "--allow-failures"])
    report = write_report(run)
    opened = Opened(browser, report)
    pngs = list((run / "plots").glob("*.png"))
    assert len(pngs) >= 3  # throughput, ratio heatmap, memory (energy: no NVML on CPU)
    _assert_loaded_cleanly(opened, len(pngs))
    page = opened.page
    headline = page.locator("#headline-table tbody tr")
    assert headline.count() == 2
    assert page.locator("#headline-table").is_visible()
    assert "<b>must stay plain text</b>" in page.locator("p.lead").inner_text()
    assert page.locator("p.lead b").count() == 0
    screenshot = run / "report-screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    page.close()


def _column(page, table: str, index: int) -> list[str | None]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('{table} tbody tr')).map(r => r.cells[{index}].getAttribute('data-sort'))")


def test_tables_sort_in_chromium_with_missing_values_last(browser, tmp_path):
    report = write_report(make_run(tmp_path / "run", with_energy=True, with_quality=True))
    opened = Opened(browser, report)
    _assert_loaded_cleanly(opened, 7)  # 6 plots and the memory estimate against its measured peak
    page = opened.page
    header = page.locator("#headline-table thead th", has_text="Throughput ratio")
    index = page.locator("#headline-table thead th").all_inner_texts().index(header.inner_text())
    for direction in ("ascending", "descending"):
        header.click()
        assert header.get_attribute("aria-sort") == direction
        keys = _column(page, "#headline-table", index)
        values = [float(k) for k in keys if k]
        assert len(values) == 34 and values == sorted(values, reverse=direction == "descending")
        assert keys[-2:] == ["", ""]  # the two failed cases stay last either way
    assert opened.errors == []
    page.close()


def test_comparison_report_in_chromium(browser, tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", with_energy=True)
    opened = Opened(browser, write_comparison(a, b, tmp_path / "cmp"))
    _assert_loaded_cleanly(opened, 1)
    assert opened.page.locator("#changes-table tbody tr").count() == 40
    opened.page.close()


def test_trends_page_in_chromium(browser, tmp_path):
    from harness.report.trends import write_trends
    from tests.history_fixtures import make_history

    make_history(tmp_path / "h.sqlite")
    opened = Opened(browser, write_trends(tmp_path / "h.sqlite", tmp_path / "trends.html"))
    _assert_loaded_cleanly(opened, 2)
    page = opened.page
    rows = page.locator("#trends-table tbody tr")
    assert rows.count() == 4  # two configurations x throughput, memory
    assert page.locator("#trends-table td.worse").count() >= 1  # c1's throughput step
    header = page.locator("#trends-table thead th", has_text="Runs")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    page.screenshot(path=str(tmp_path / "trends-screenshot.png"), full_page=True)
    assert opened.errors == []
    page.close()
