"""Quality: train on a real corpus for a fixed number of steps, then measure held-out loss.

`step` is one AdamW step on the next training batch, so the worker times real training. Every
step counts toward `run.quality_steps`, the worker's probe, warmup and energy steps included, and
`finish` trains on to exactly that budget: the evaluated model is the same however many steps the
timing needed. If timing ran past the budget, the weights as they were at the budget are restored.

Learning curve: with `run.eval_every` N, the held-out windows are also scored after every N-th step.
A step inside the worker's timed region only copies the weights (no evaluation, no host sync there);
`finish` scores those copies on a scratch model. Evaluation draws no random numbers, so the training
run and its final `val_loss` are the same with and without a curve.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F

from harness import accounting
from harness.config import Case
from harness.corpus import Corpus, eval_batches, load_corpus, train_batches
from harness.models.moe.layer import MoELayer
from harness.workloads import Workload
from harness.workloads.training import StepLog, make_optimizer, update


def check_vocab(case: Case, corpus: Corpus) -> None:
    if case.model.vocab_size < corpus.vocab_size:
        raise ValueError(
            f"model.vocab_size ({case.model.vocab_size}) is smaller than the vocabulary of run.corpus "
            f"{corpus.name!r} ({corpus.vocab_size} byte values); set model.vocab_size >= {corpus.vocab_size}"
        )


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up over the first `warmup_steps` steps (step counts from 0), then constant."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def loss_of(model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-byte cross-entropy, MoE auxiliary loss) of one [B, T + 1] batch."""
    logits, aux_loss = model(batch[:, :-1])
    targets = batch[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)), aux_loss


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Mean cross-entropy per predicted byte (nats) over the batches, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss, _ = loss_of(model, batch)
        n = batch[:, 1:].numel()
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / count


@contextmanager
def eval_capacity(model: torch.nn.Module, factor: Optional[Union[float, str]]) -> Iterator[None]:
    """Score with every MoE layer at capacity `factor` ('dropless': no limit; None: as trained), then
    put the training capacity back. ST-MoE trains at 1.25 and evaluates at 2.0: fewer tokens dropped at
    evaluation, at no training cost."""
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    trained = [layer.capacity_factor for layer in layers]
    if factor is not None:
        for layer in layers:
            layer.capacity_factor = None if factor == "dropless" else float(factor)
    try:
        yield
    finally:
        for layer, value in zip(layers, trained):
            layer.capacity_factor = value


def eval_capacity_label(case: Case) -> Optional[str]:
    """The capacity factor val_loss was scored at, as the `eval_capacity_factor` column shows it."""
    if case.moe is None:
        return None
    factor = case.run.eval_capacity_factor
    factor = case.moe.capacity_factor if factor is None else factor
    return "dropless" if factor in (None, "dropless") else f"{float(factor):g}"


def after_training(model: torch.nn.Module, case: Case, into: Path, run_dir: Path) -> dict[str, Any]:
    """What `run.save_weights` and `run.lmeval_tasks` ask of the trained model (the weights `finish`
    scored): the weights and case kept in `into`, the lm-eval tasks scored at the evaluation capacity
    with lm-eval's results JSON kept next to them. Returns the row's columns (paths relative to the run)."""
    from harness import checkpoint

    row: dict[str, Any] = {}
    run = case.run
    if run.save_weights:
        row["weights_path"] = str(checkpoint.save(model, case, into).relative_to(run_dir))
    if run.lmeval_tasks:
        from harness.lmeval_adapter import columns, evaluate

        results_path = into / "lmeval_results.json"
        with eval_capacity(model, run.eval_capacity_factor):
            results = evaluate(model, run.lmeval_tasks, results_path=results_path)
        row.update(columns(results), lmeval_tasks=" ".join(run.lmeval_tasks),
                   lmeval_results=str(results_path.relative_to(run_dir)))
    return row


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    run = case.run
    corpus = load_corpus(run.corpus)
    check_vocab(case, corpus)
    batches = train_batches(corpus.train, run.batch_size, case.model.seq_len, run.seed)
    held_out = [b.to(device) for b in eval_batches(corpus.val, run.batch_size, case.model.seq_len, run.eval_batches)]
    model.train()
    optimizer = make_optimizer(model, run)
    log = StepLog(model, health=True)
    state: dict[str, Any] = {"steps": 0, "at_budget": None, "finishing": False}
    pending: dict[int, dict[str, torch.Tensor]] = {}  # step index -> weights copied inside the timed region

    def score(m: torch.nn.Module) -> float:
        with eval_capacity(m, run.eval_capacity_factor):
            return validation_loss(m, held_out)

    def weights() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = run.lr * warmup_factor(state["steps"], run.lr_warmup_steps)
        loss, aux_loss = loss_of(model, next(batches).to(device))
        grad_norm = update(model, optimizer, loss + aux_loss, run.grad_clip, want_norm=True)
        log.record(loss, grad_norm)
        state["steps"] += 1
        done = state["steps"]
        if done == run.quality_steps:
            state["at_budget"] = weights()
        elif run.eval_every and done % run.eval_every == 0 and done < run.quality_steps:
            if state["finishing"]:
                log.annotate(done - 1, val_loss=score(model))
            else:
                pending[done - 1] = weights()

    def finish() -> dict[str, Any]:
        if pending:
            scratch = copy.deepcopy(model)
            for index, snapshot in sorted(pending.items()):
                scratch.load_state_dict(snapshot)
                log.annotate(index, val_loss=score(scratch))
            pending.clear()
            del scratch
        state["finishing"] = True
        while state["steps"] < run.quality_steps:
            step()
        if state["steps"] > run.quality_steps:
            model.load_state_dict(state["at_budget"])
        val_loss = score(model)
        log.annotate(run.quality_steps - 1, val_loss=val_loss)
        tokens_per_step = run.batch_size * case.model.seq_len
        tokens = run.quality_steps * tokens_per_step
        return {
            "val_loss": val_loss,
            "val_tokens": sum(b[:, 1:].numel() for b in held_out),
            "quality_steps": run.quality_steps,
            "quality_tokens": tokens,
            "quality_train_flops": accounting.summary(case.model, case.moe)["train_flops_per_token"] * tokens,
            "corpus": corpus.label,
            "eval_capacity_factor": eval_capacity_label(case),
        }

    def last_loss() -> float | None:
        return float(log.entries[-1][0]) if len(log) else None

    def step_log() -> list[dict[str, Any]]:
        """The steps the evaluated model took (those past the budget were undone)."""
        return log.rows(limit=run.quality_steps)

    return Workload(step, run.batch_size * case.model.seq_len, training=True, last_loss=last_loss, finish=finish,
                    step_log=step_log)
