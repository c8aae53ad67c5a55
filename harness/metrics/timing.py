"""Wall-clock timing of one step callable: perf_counter on CPU, CUDA events on GPU.

Warmup runs until consecutive timings settle (or a cap is hit), then timed repeats continue until
both a minimum count and a minimum measuring time are met, as pyperf and optimum-benchmark do.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timings:
    seconds: list[float]
    warmup_iterations: int
    timer: str
    min_time_capped: bool = False  # run.min_time_s was not reached: timing stopped at max_repeats


def _settled(times: list[float], window: int = 3, tolerance: float = 0.1) -> bool:
    """The last `window` warmup times lie within `tolerance` of their median."""
    if len(times) < window:
        return False
    recent = times[-window:]
    mid = statistics.median(recent)
    return all(abs(t - mid) <= tolerance * mid for t in recent)


def _time_once_cpu(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_steps(
    step: Callable[[], None],
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    max_warmup: int = 20,
    max_repeats: int = 1000,
    agree: Callable[[bool], bool] = bool,
) -> Timings:
    """Run `warmup` (at least) warmup steps, then timed repeats; returns per-step seconds.

    `agree` turns this process's "one more step?" into the answer every process of a multi-rank case
    acts on (any rank wanting more), so all ranks run the same steps; it runs between steps.
    """
    if device.type == "cuda":
        return _time_cuda(step, device, warmup, repeats, min_time_s, max_warmup, max_repeats, agree)
    warm: list[float] = []
    while agree(len(warm) < warmup or (len(warm) < max(warmup, max_warmup) and warmup and not _settled(warm))):
        warm.append(_time_once_cpu(step))
    times: list[float] = []
    started = time.perf_counter()
    while agree(len(times) < repeats or (time.perf_counter() - started < min_time_s and len(times) < max_repeats)):
        times.append(_time_once_cpu(step))
    capped = time.perf_counter() - started < min_time_s
    return Timings(times, len(warm), "perf_counter", capped)


def _time_cuda(step, device, warmup, repeats, min_time_s, max_warmup, max_repeats, agree=bool) -> Timings:
    """CUDA events around each step; one synchronisation per read-out batch, not per step."""

    def run_batch(n: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]

    torch.cuda.synchronize(device)
    warm: list[float] = run_batch(warmup) if warmup else []
    while agree(bool(warmup) and len(warm) < max(warmup, max_warmup) and not _settled(warm)):
        warm += run_batch(1)
    times = run_batch(repeats)
    while agree(sum(times) < min_time_s and len(times) < max_repeats):
        times += run_batch(min(repeats, max_repeats - len(times)))
    return Timings(times, len(warm), "cuda_event", sum(times) < min_time_s)


def time_pair(
    step_a: Callable[[], None],
    step_b: Callable[[], None],
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    max_repeats: int = 1000,
) -> tuple[list[float], list[float]]:
    """Alternate A and B step by step; returns both sides' per-step seconds."""

    def once(step: Callable[[], None]) -> float:
        if device.type != "cuda":
            return _time_once_cpu(step)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    for _ in range(max(warmup, 1)):
        once(step_a)
        once(step_b)
    a: list[float] = []
    b: list[float] = []
    started = time.perf_counter()
    while len(a) < repeats or (time.perf_counter() - started < min_time_s and len(a) < max_repeats):
        a.append(once(step_a))
        b.append(once(step_b))
    return a, b
