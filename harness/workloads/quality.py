"""Quality: train on a real corpus for a fixed number of steps, then measure held-out loss.

`step` is one AdamW step on the next training batch, so the worker times real training. Every
step counts toward `run.quality_steps`, the worker's probe, warmup and energy steps included, and
`finish` trains on to exactly that budget: the evaluated model is the same however many steps the
timing needed. If timing ran past the budget, the weights as they were at the budget are restored.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness import accounting
from harness.config import Case
from harness.corpus import Corpus, eval_batches, load_corpus, train_batches
from harness.workloads import Workload


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


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    run = case.run
    corpus = load_corpus(run.corpus)
    check_vocab(case, corpus)
    batches = train_batches(corpus.train, run.batch_size, case.model.seq_len, run.seed)
    held_out = [b.to(device) for b in eval_batches(corpus.val, run.batch_size, case.model.seq_len, run.eval_batches)]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr)
    state: dict[str, Any] = {"steps": 0, "at_budget": None, "loss": None}

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = run.lr * warmup_factor(state["steps"], run.lr_warmup_steps)
        loss, aux_loss = loss_of(model, next(batches).to(device))
        (loss + aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_optimizer_step()
        state["loss"] = loss.detach()
        state["steps"] += 1
        if state["steps"] == run.quality_steps:
            state["at_budget"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish() -> dict[str, Any]:
        while state["steps"] < run.quality_steps:
            step()
        if state["steps"] > run.quality_steps:
            model.load_state_dict(state["at_budget"])
        tokens_per_step = run.batch_size * case.model.seq_len
        tokens = run.quality_steps * tokens_per_step
        return {
            "val_loss": validation_loss(model, held_out),
            "val_tokens": sum(b[:, 1:].numel() for b in held_out),
            "quality_steps": run.quality_steps,
            "quality_tokens": tokens,
            "quality_train_flops": accounting.summary(case.model, case.moe)["train_flops_per_token"] * tokens,
            "corpus": corpus.label,
        }

    def last_loss() -> float | None:
        return float(state["loss"]) if state["loss"] is not None else None

    return Workload(step, run.batch_size * case.model.seq_len, training=True, last_loss=last_loss, finish=finish)
