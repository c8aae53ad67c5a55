"""lm-eval in the pipeline: run.lmeval_tasks scores the quality workload's trained model in the worker
(columns with stderr, lm-eval's results JSON in the run folder), run.save_weights keeps the weights,
`python -m harness eval RUN CASE --tasks ...` scores them later, and docs/quality.md's snippet runs.

Skipped (with the reason) without lm-eval; the dev extra installs it, so CI runs it.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from harness.suite import SuiteError, build_suite

SUITE = """
name: lmeval-pipeline
model: {vocab_size: 256, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, seq_len: 32}
moe: {num_experts: 2, top_k: 1, capacity_factor: 1.0, impl: grouped}
run: {quality_steps: 6, eval_batches: 1, batch_size: 2, warmup: 0, repeats: 2, measure_energy: false, threads: 1,
      device: cpu, lmeval_tasks: [harness_cloze], save_weights: true, eval_capacity_factor: dropless}
workloads: [quality]
baselines: []
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'moe-harness[lmeval]')")
    from harness.cli import main

    root = tmp_path_factory.mktemp("lmeval")
    (root / "suite.yaml").write_text(SUITE)
    assert main(["run", str(root / "suite.yaml"), "--out", str(root / "run"), "--no-report", "--quiet"]) == 0
    return root / "run"


def test_lmeval_columns_and_results_json_come_from_the_worker(run):
    from harness.analysis import load

    row = load(run).iloc[0]
    assert row["status"] == "ok" and row["lmeval_tasks"] == "harness_cloze"
    assert row["lmeval_harness_cloze_n"] == 16 and 0 <= row["lmeval_harness_cloze_acc"] <= 1
    stderr = row["lmeval_harness_cloze_acc_stderr"]
    acc = row["lmeval_harness_cloze_acc"]
    assert stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 15))  # lm-eval's closed-form stderr of a mean
    results = json.loads((run / row["lmeval_results"]).read_text())
    assert results["results"]["harness_cloze"]["acc,none"] == acc
    assert row["eval_capacity_factor"] == "dropless"


def test_saved_weights_are_the_scored_model_and_eval_scores_them_again(run, capsys):
    import torch

    from harness.analysis import load
    from harness.checkpoint import load_trained
    from harness.cli import main
    from harness.corpus import eval_batches, load_corpus
    from harness.workloads.quality import eval_capacity, validation_loss

    row = load(run).iloc[0]
    case = row["case_id"]
    assert (run / row["weights_path"]).is_file()
    model = load_trained(run, case[:6])
    torch.set_num_threads(1)
    held_out = eval_batches(load_corpus("pydoc").val, 2, 32, 1)
    with eval_capacity(model, "dropless"):
        assert validation_loss(model, held_out) == pytest.approx(row["val_loss"], abs=1e-6)
    assert main(["eval", str(run), case[:6], "--tasks", "harness_cloze"]) == 0
    out = capsys.readouterr().out
    shown = float(re.search(r"harness_cloze\s+acc\s+([0-9.]+) ±", out).group(1))
    assert shown == pytest.approx(row["lmeval_harness_cloze_acc"], abs=1e-4)
    assert (run / "artifacts" / f"{case}-quality" / "lmeval_harness_cloze.json").is_file()
    assert main(["eval", str(run), "nosuchcase", "--tasks", "harness_cloze"]) == 2


def test_the_docs_snippet_runs_as_written(run):
    from harness.analysis import load

    text = Path("docs/quality.md").read_text()
    snippet = re.search(r"```python\n(from harness.checkpoint import load_trained.*?)```", text, re.S).group(1)
    case = load(run).iloc[0]["case_id"]
    snippet = re.sub(r'load_trained\("[^"]+", "[^"]+"\)', f'load_trained("{run}", "{case}")', snippet)
    scope: dict = {}
    exec(compile(snippet, "docs/quality.md", "exec"), scope)
    assert set(scope["results"]) == {"harness_cloze"} and "acc_stderr" in scope["results"]["harness_cloze"]


def test_lmeval_tasks_are_checked_when_the_suite_loads():
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'moe-harness[lmeval]')")
    data = yaml.safe_load(SUITE)
    data["run"]["lmeval_tasks"] = ["harness_clozee"]
    with pytest.raises(SuiteError, match="unknown task.*harness_clozee.*shipped: harness_cloze"):
        build_suite(data)
    data = yaml.safe_load(SUITE)
    data["workloads"] = ["train_step"]
    with pytest.raises(SuiteError, match="add quality to workloads"):
        build_suite(data)
