"""lm-eval adapter: scores against a direct computation from the model; the local tasks end to end.

Skipped unless lm-eval is installed (pip install 'moe-harness[lmeval]'); the import-safety test always runs.
"""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.models.transformer import build_model

WINDOW = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(moe: MoEConfig | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=WINDOW)
    return build_model(Case(kind="moe" if moe else "dense", model=model, moe=moe, run=RunSettings(device="cpu")))


def direct_logprobs(model, text_ids: list[int]) -> list[float]:
    """log p(byte_i | "\\n" + all earlier bytes), one forward per byte (the slow, obvious way)."""
    ids = [ord("\n")] + text_ids
    assert len(ids) - 1 <= WINDOW, "the obvious way needs everything inside one window"
    out = []
    with torch.no_grad():
        for i in range(1, len(ids)):
            logits = model(torch.tensor([ids[:i]]))[0][0, -1]
            out.append(float(F.log_softmax(logits, -1)[ids[i]]))
    return out


def test_imports_without_lm_eval():
    code = (
        "import sys; sys.modules['lm_eval'] = None; sys.modules['lm_eval.api.model'] = None\n"
        "import harness.lmeval_adapter as a\n"
        "assert not a.LMEVAL_AVAILABLE\n"
        "try:\n    a.evaluate(None)\nexcept ImportError as e:\n    assert 'pip install' in str(e)\n"
        "else:\n    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def lm_eval(tmp_path, monkeypatch):
    # datasets caches each JSONL as Arrow under HF_HOME; keep it out of the user's home (read at import).
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    return pytest.importorskip("lm_eval")


def requests(*args_list):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, args, i) for i, args in enumerate(args_list)]


@pytest.mark.parametrize("moe", [None, MoEConfig(num_experts=2, top_k=1, capacity_factor=None)], ids=["dense", "moe"])
def test_loglikelihood_matches_the_model(lm_eval, moe):
    from harness.lmeval_adapter import ByteLM, encode

    model = tiny_model(moe)
    lm = ByteLM(model)
    context, continuation = "A cat", " sat on"
    (score, greedy), (empty, _) = lm.loglikelihood(requests((context, continuation), ("x", "")))
    every = direct_logprobs(model, encode(context + continuation))
    assert score == pytest.approx(sum(every[-len(encode(continuation)) :]), abs=1e-4)
    assert greedy is False  # a random model does not predict English
    assert empty == 0.0


def test_loglikelihood_rolling_scores_every_byte_with_windowed_context(lm_eval):
    from harness.lmeval_adapter import ByteLM, encode

    model = tiny_model()
    text = "Mixture-of-experts layers route tokens."  # longer than two windows
    (score,) = ByteLM(model).loglikelihood_rolling(requests((text,)))
    # lm-eval's disjoint windows: byte i sees the bytes since the start of its window (at least one)
    ids = [ord("\n")] + encode(text)
    expected = 0.0
    with torch.no_grad():
        for start in range(1, len(ids), WINDOW):
            end = min(start + WINDOW, len(ids))
            inputs = ids[max(0, end - 1 - WINDOW) : end - 1]
            logp = F.log_softmax(model(torch.tensor([inputs]))[0][0], -1)[-(end - start) :]
            expected += float(logp.gather(1, torch.tensor(ids[start:end])[:, None]).sum())
    assert score == pytest.approx(expected, abs=1e-4)
    assert len(encode(text)) > 2 * WINDOW


def test_greedy_generation_stops_at_the_stop_string(lm_eval):
    from harness.lmeval_adapter import ByteLM, decode, encode

    model = tiny_model()
    lm = ByteLM(model)
    ids = [ord("\n")] + encode("abc")
    greedy = []
    with torch.no_grad():
        for _ in range(6):
            greedy.append(int(model(torch.tensor([(ids + greedy)[-WINDOW:]]))[0][0, -1].argmax()))
    (free,) = lm.generate_until(requests(("abc", {"until": [], "max_gen_toks": 6})))
    assert free == decode(greedy)
    stop = decode(greedy[2:4])
    (cut,) = lm.generate_until(requests(("abc", {"until": [stop], "max_gen_toks": 6})))
    assert cut == decode(greedy).split(stop)[0]


def test_evaluate_bits_per_byte_is_our_own_log_likelihood(lm_eval):
    import json
    from pathlib import Path

    import harness.lmeval_adapter as adapter

    model = tiny_model()
    model.train()
    cwd = Path.cwd()
    results = adapter.evaluate(model, adapter.BUILTIN_TASKS)
    assert model.training  # mode restored
    cloze, prose = results["harness_cloze"], results["harness_prose"]
    assert cloze["n"] == 16 and 0.0 <= cloze["acc"] <= 1.0 and 0.0 <= cloze["acc_norm"] <= 1.0
    assert {"byte_perplexity", "word_perplexity"} <= set(prose) and "sample_len" not in prose
    texts = [json.loads(line)["text"] for line in open(adapter.TASKS_DIR / "data" / "harness_prose.jsonl")]
    lm = adapter.ByteLM(model)
    total = sum(lm.loglikelihood_rolling(requests(*[(t,) for t in texts])))
    n_bytes = sum(len(adapter.encode(t)) for t in texts)
    assert prose["n"] == len(texts)
    assert prose["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-6)
    assert 7.0 < prose["bits_per_byte"] < 9.0  # untrained: about uniform over 256 bytes (8 bits)
    assert Path.cwd() == cwd


def test_unknown_task_is_a_clear_error(lm_eval):
    from harness.lmeval_adapter import evaluate

    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['nope'\].*harness_cloze"):
        evaluate(tiny_model(), ["nope"])


@pytest.fixture
def hf_checkpoint(tmp_path):
    """A tiny random Mixtral with a byte-level BPE tokenizer trained on a few words, saved to disk."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (lm-eval[hf])")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator(["the model reads the text and the text reads the model"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    model = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, seq_len=1024,
                        source="hf", config="mixtral", activation="swiglu", norm="rmsnorm", positional="rope",
                        tie_embeddings=False)
    moe = MoEConfig(num_experts=4, top_k=2, capacity_factor=None, renormalize=True)
    torch.manual_seed(0)
    hf = build_model(Case(kind="moe", model=model, moe=moe, run=RunSettings(device="cpu"))).hf
    hf.config.bos_token_id = hf.config.eos_token_id = fast.eos_token_id
    hf.config.pad_token_id = None
    hf.save_pretrained(tmp_path / "ckpt")
    fast.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", hf.eval(), fast


def test_evaluate_hf_scores_a_checkpoint_with_lm_evals_hf_model(lm_eval, hf_checkpoint):
    """bits per byte from lm-eval's HFLM equal our own log-likelihood of the texts under the checkpoint."""
    import json

    import harness.lmeval_adapter as adapter

    path, hf, tokenizer = hf_checkpoint
    prose = adapter.evaluate_hf(path, ["harness_prose"])["harness_prose"]
    texts = [json.loads(line)["text"] for line in open(adapter.TASKS_DIR / "data" / "harness_prose.jsonl")]
    total = 0.0
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)
            logprobs = F.log_softmax(hf(torch.tensor([ids[:-1]])).logits[0].float(), -1)
            total += float(logprobs.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    n_bytes = sum(len(t.encode()) for t in texts)
    assert prose["n"] == len(texts)
    assert prose["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-4)


def test_evaluate_hf_refuses_a_folder_without_a_checkpoint(lm_eval, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from harness.lmeval_adapter import evaluate_hf

    with pytest.raises(ValueError, match="not a Hugging Face checkpoint"):
        evaluate_hf(tmp_path)
