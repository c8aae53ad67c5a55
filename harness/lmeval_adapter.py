"""EleutherAI lm-evaluation-harness on our TransformerLM, offline (optional extra: pip install 'moe-harness[lmeval]').

`ByteLM` wraps a trained model as an lm-eval `LM`: the tokenizer is UTF-8 bytes, as in the quality
workload, and every request is scored as text that starts a new paragraph (after one "\\n" byte), since
the model never saw a BOS id in training. `evaluate(model, tasks)` runs the local tasks shipped in
`harness/lmeval_tasks/` (or another folder of task YAMLs) without the network and without indexing
lm-eval's thousands of built-in tasks.

`evaluate_hf(path, tasks)` scores a Hugging Face checkpoint directory (its own tokenizer and weights)
with lm-eval's own `hf` model on the same local tasks, offline; it needs transformers (extra [hf]) too.

This module imports without lm-eval; using it without lm-eval raises an ImportError saying what to install.
"""
from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

# Read by `datasets` and `huggingface_hub` at import time, so set before lm-eval imports them.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# lm-eval's bootstrap otherwise starts a process pool per metric, inside a measuring worker.
os.environ.setdefault("DISABLE_MULTIPROC", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    from lm_eval.api.model import LM
except ImportError:
    LM = object
    LMEVAL_AVAILABLE = False
else:
    LMEVAL_AVAILABLE = True

TASKS_DIR = Path(__file__).parent / "lmeval_tasks"
BUILTIN_TASKS = ("harness_cloze", "harness_prose")
PARAGRAPH = ord("\n")
BOOTSTRAP_ITERS = 1000
"""Resamples for the stderr of metrics without a closed form (bits_per_byte, perplexities); lm-eval's
own default is 100,000, minutes on a CPU for a 2-second evaluation."""


def lmeval_problem() -> str | None:
    """Why lm-eval cannot run here (not installed), found without importing it; None when it can."""
    if importlib.util.find_spec("lm_eval") is None:
        return "lm-eval is not installed: pip install 'moe-harness[lmeval]' (or pip install lm-eval)"
    return None


def require_lmeval() -> None:
    if not LMEVAL_AVAILABLE:
        raise ImportError("lm-eval is not installed: pip install 'moe-harness[lmeval]' (or pip install lm-eval)")


def shipped_tasks(tasks_dir: Path = TASKS_DIR) -> list[str]:
    """The local tasks in `tasks_dir` (one YAML per task, named after it)."""
    return sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


class ByteLM(LM):
    """lm-eval's three request types on a `TransformerLM` (forward: tokens -> (logits, aux_loss)).

    Sequences longer than the model's `seq_len` are scored in disjoint windows, each target with as
    much preceding context as fits (lm-eval's rolling-window rule). A capacity-limited MoE computes
    its capacity per scored window here, not per training batch.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        require_lmeval()
        if model.config.vocab_size < 256:
            raise ValueError(f"ByteLM reads UTF-8 bytes: model.vocab_size must be >= 256, got {model.config.vocab_size}")
        super().__init__()
        self.model = model.eval()
        self.window = model.config.seq_len
        self.torch_device = next(model.parameters()).device

    @torch.no_grad()
    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids], device=self.torch_device))[0][0].float()

    def target_logprobs(self, tokens: list[int], n: int) -> tuple[torch.Tensor, bool]:
        """(log p of each of the last `n` tokens given what precedes it, whether each is the argmax)."""
        if not 0 < n < len(tokens):
            raise ValueError(f"need 1 <= n < len(tokens) (one token of context), got n={n}, len={len(tokens)}")
        logprobs, greedy = [], True
        start = len(tokens) - n
        while start < len(tokens):
            end = min(start + self.window, len(tokens))
            inputs = tokens[max(0, end - 1 - self.window) : end - 1]
            rows = F.log_softmax(self._logits(inputs)[-(end - start) :], dim=-1)
            targets = torch.tensor(tokens[start:end], device=rows.device)
            logprobs.append(rows.gather(1, targets[:, None]).squeeze(1))
            greedy = greedy and bool((rows.argmax(-1) == targets).all())
            start = end
        return torch.cat(logprobs), greedy

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            cont = encode(continuation)
            if not cont:
                out.append((0.0, True))
                continue
            logprobs, greedy = self.target_logprobs([PARAGRAPH] + encode(context) + cont, len(cont))
            out.append((float(logprobs.sum()), greedy))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            ids = encode(text)
            out.append(float(self.target_logprobs([PARAGRAPH] + ids, len(ids))[0].sum()) if ids else 0.0)
        return out

    def generate_until(self, requests) -> list[str]:
        """Greedy decoding up to `max_gen_toks` bytes (default 32), cut at the first stop string."""
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [s for s in until if s]
            ids, new = [PARAGRAPH] + encode(context), []
            for _ in range(int(gen_kwargs.get("max_gen_toks", 32))):
                new.append(int(self._logits((ids + new)[-self.window :])[-1].argmax()))
                if any(stop in decode(new) for stop in until):
                    break
            text = decode(new)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Task YAMLs name their JSONL files relative to their folder; `datasets` resolves them against the CWD."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _task_manager(tasks: list[str], tasks_dir: Path):
    """lm-eval's task index of `tasks_dir` only (not its thousands of built-in tasks)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown} in {tasks_dir} (known: {', '.join(sorted(manager.all_tasks))})")
    return manager


def _run(model: Any, tasks: list[str], tasks_dir: Path, bootstrap_iters: int = BOOTSTRAP_ITERS,
         results_path: Path | str | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    manager = _task_manager(tasks, tasks_dir)
    with _working_directory(tasks_dir):
        results = lm_eval.simple_evaluate(
            model=model, tasks=tasks, task_manager=manager, num_fewshot=0,
            bootstrap_iters=bootstrap_iters, log_samples=False, **options,
        )
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        Path(results_path).write_text(json.dumps(results, indent=2, default=handle_non_serializable))
    return _metrics(results, tasks)


def evaluate(
    model: torch.nn.Module, tasks: Iterable[str] = BUILTIN_TASKS, tasks_dir: Path | str = TASKS_DIR,
    bootstrap_iters: int = BOOTSTRAP_ITERS, results_path: Path | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot lm-eval results per task: {task: {metric: value, metric_stderr: value, ..., "n": documents}}.

    Metric names drop lm-eval's ",none" filter suffix; stderr entries that lm-eval could not compute
    are left out (`bootstrap_iters=0` leaves out those that need a bootstrap). `results_path`: where to
    keep lm-eval's own results JSON. The model's train/eval mode is restored afterwards.
    """
    require_lmeval()
    was_training = model.training
    try:
        return _run(ByteLM(model), list(tasks), Path(tasks_dir).resolve(), bootstrap_iters, results_path, batch_size=1)
    finally:
        model.train(was_training)


def columns(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`evaluate`'s results as result-row columns: `lmeval_<task>_<metric>` (and `..._stderr`, `..._n`)."""
    return {f"lmeval_{task}_{metric}": value for task, metrics in results.items() for metric, value in metrics.items()}


def evaluate_hf(
    path: Path | str, tasks: Iterable[str] = BUILTIN_TASKS, tasks_dir: Path | str = TASKS_DIR,
    dtype: str = "float32", device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """`evaluate`, for a Hugging Face checkpoint directory scored by lm-eval's own `hf` model
    (`HFLM`: the checkpoint's tokenizer and weights, loaded from disk only)."""
    require_lmeval()
    from harness.models.hf.build import require_transformers

    require_transformers()
    if importlib.util.find_spec("accelerate") is None:
        raise ImportError("lm-eval's hf model needs accelerate: pip install 'lm-eval[hf]'")
    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
    args = {"pretrained": str(path), "dtype": dtype, "device": device, "local_files_only": True}
    return _run("hf", list(tasks), Path(tasks_dir).resolve(), model_args=args, batch_size=1)


def _metrics(results: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        metrics = {
            key.split(",")[0]: value
            for key, value in results["results"][task].items()
            if key not in ("alias", "sample_len") and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        out[task] = {**metrics, "n": results["n-samples"][task]["effective"]}
    return out
