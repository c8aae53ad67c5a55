"""The trend page: per-point judgements (the compare --history rule), steps, and the page itself."""
from harness.cli import main as cli
from harness.compare.history import WORSE, configurations
from harness.report.trends import PLOTTED, build_series
from tests.history_fixtures import make_history


def test_series_marks_the_first_slow_night_and_the_step(tmp_path):
    history = make_history(tmp_path / "h.sqlite")
    points = configurations(history.entries(rows=True))[("c1", "forward")]
    [throughput] = [build_series(points, m, window=10, threshold=0.10) for m in PLOTTED[:1]]
    verdicts = [j.verdict.verdict for j in throughput.judgements]
    assert verdicts[10] == WORSE  # the first night at the new level, against the old window
    assert WORSE not in verdicts[:10]  # noise alone never fails a night
    assert verdicts[-1] == "same"  # once the new level has 4 runs, the window restarts at its step
    assert throughput.judgements[-1].level is not None
    [(at, step)] = throughput.steps
    assert at == 10 and step.change < -0.2  # throughput fell by ~1/1.3
    steady = build_series(configurations(history.entries(rows=True))[("c2", "forward")], PLOTTED[0], 10, 0.10)
    assert steady.steps == [] and WORSE not in [j.verdict.verdict for j in steady.judgements]


def test_trends_page_written(tmp_path, capsys):
    make_history(tmp_path / "h.sqlite")
    out = tmp_path / "site" / "trends.html"
    assert cli(["trends", str(tmp_path / "h.sqlite"), "--out", str(out)]) == 0
    html = out.read_text()
    assert "c1" in html and "c2" in html and "Test CPU" in html
    assert html.count("<img") == 2  # one figure per configuration
    assert "-23% at c10" in html
