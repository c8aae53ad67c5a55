"""run.eval_capacity_factor: the quality workload scores held-out text at its own capacity factor."""
import pytest
import torch
import yaml

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.corpus import eval_batches, load_corpus
from harness.models.transformer import build_model
from harness.suite import SuiteError, build_suite
from harness.sweep import expand
from harness.workloads import make_workload
from harness.workloads.quality import eval_capacity, validation_loss

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32)
CRAMPED = MoEConfig(num_experts=4, top_k=1, capacity_factor=0.5, impl="loop")  # drops about half the tokens


def _case(moe: MoEConfig, **run) -> Case:
    settings = {"batch_size": 4, "quality_steps": 4, "eval_batches": 2, "device": "cpu", "seed": 0}
    return Case(kind="moe", model=TINY, moe=moe, run=RunSettings(**{**settings, **run}))


def test_dropless_evaluation_equals_a_dropless_model_with_the_same_weights():
    torch.manual_seed(0)
    cramped = build_model(_case(CRAMPED))
    dropless = build_model(_case(CRAMPED.model_copy(update={"capacity_factor": None})))
    dropless.load_state_dict(cramped.state_dict())
    batches = eval_batches(load_corpus("pydoc").val, 4, 32, 2)
    as_trained = validation_loss(cramped, batches)
    with eval_capacity(cramped, "dropless"):
        unlimited = validation_loss(cramped, batches)
    assert unlimited == validation_loss(dropless, batches) and unlimited != as_trained
    assert validation_loss(cramped, batches) == as_trained  # the training capacity is back
    with eval_capacity(cramped, 0.5):
        assert validation_loss(cramped, batches) == as_trained


def test_the_quality_row_records_the_capacity_it_scored_at():
    rows = {}
    for factor in (None, 2.0, "dropless"):
        case = _case(CRAMPED, eval_capacity_factor=factor)
        torch.manual_seed(0)
        workload = make_workload("quality", build_model(case), case, torch.device("cpu"))
        rows[factor] = workload.finish()
    assert [rows[f]["eval_capacity_factor"] for f in (None, 2.0, "dropless")] == ["0.5", "2", "dropless"]
    assert rows[None]["val_loss"] != rows[2.0]["val_loss"]  # same training, scored with fewer drops


SUITE = """
name: evalcf
model: {vocab_size: 256, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, seq_len: 32}
moe: {num_experts: 4, top_k: 1, capacity_factor: 1.0}
workloads: [quality]
sweep: {grid: {run.eval_capacity_factor: [null, 2.0, dropless]}}
"""


def test_variants_share_one_baseline_and_expert_choice_is_refused():
    expansion = expand(build_suite(yaml.safe_load(SUITE)))
    assert [c.kind for c in expansion] == ["moe", "dense", "moe", "moe"]
    data = yaml.safe_load(SUITE)
    data["moe"]["router"] = "expert_choice"
    with pytest.raises(SuiteError, match="expert_choice has no token capacity"):
        expand(build_suite(data))
