"""Autoregressive decoding: greedy generation of `run.decode_tokens` tokens per sequence from a KV cache.

The prompt (the rest of `model.seq_len`) is prefilled once when the workload is built; each timed
step decodes the same positions again from that prefix, one token for the whole batch at a time,
which is the memory-bound regime where MoE's total parameter count matters: at small batches a
decoding step reads most experts' weights for a few tokens each (sweep `run.batch_size` to see it).

After timing, `finish` times the prefill itself (prompt forward and the first token's argmax) as
`ttft_ms`, time to first token; `per_token_ms` is a timed step divided by the tokens it generates
per sequence, the latency between successive tokens.
"""
from __future__ import annotations

import statistics

import torch

from harness.config import Case
from harness.metrics.timing import time_steps
from harness.suite import workload_problem
from harness.workloads import Workload, sample_tokens


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    problem = workload_problem(case, "decode")  # refused when the suite loads; this guards direct callers
    if problem:
        raise ValueError(problem)
    new_tokens = case.run.decode_tokens
    prompt_len = case.model.seq_len - new_tokens
    model.eval()
    dtype = next(model.parameters()).dtype
    caches = model.make_caches(case.run.batch_size, device, dtype)
    prompt = sample_tokens(case, device)[:, :prompt_len]

    @torch.inference_mode()
    def prefill() -> torch.Tensor:
        logits, _ = model(prompt, caches)
        return logits[:, -1:].argmax(-1)

    first = prefill()

    @torch.inference_mode()
    def step() -> None:
        token = first
        for position in range(prompt_len, prompt_len + new_tokens):
            logits, _ = model(token, caches, position)
            token = logits[:, -1:].argmax(-1)

    def finish() -> dict[str, float]:
        run = case.run
        ttft = time_steps(prefill, device, run.warmup, run.repeats, run.min_time_s)
        return {"prompt_len": prompt_len, "decode_tokens": new_tokens, "ttft_ms": statistics.median(ttft.seconds) * 1e3}

    return Workload(
        step,
        tokens_per_step=case.run.batch_size * new_tokens,
        training=False,
        finish=finish,
        context_len=prompt_len + (new_tokens + 1) // 2,
    )
