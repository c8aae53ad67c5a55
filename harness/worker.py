"""Measure one (case, workload) in a fresh process and write one JSON result.

Protocol: `python -m harness.worker JOB.json RESULT.json`. The runner never trusts anything else
this process prints (that is log). A crash without RESULT.json is turned into a failed row by the
runner, so nothing here needs to survive a segfault or the OOM killer.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if __name__ == "__main__":
    from harness.lifeline import die_with_parent

    die_with_parent()

import torch  # noqa: E402 - after the parent-death request above

from harness.atomic import write_atomic  # noqa: E402
from harness.config import Case  # noqa: E402
from harness.contracts import JOB_VERSION, Calibration, IdlePower, WorkerJob, WorkerResult, read_versioned  # noqa: E402

if TYPE_CHECKING:
    from harness.parallel.measure import RankSession


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(requested)


def classify(exc: BaseException) -> str:
    """'oom' for out-of-memory in any of its forms, 'failed' for everything else."""
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))):
        return "oom"
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text:
        return "oom"
    return "failed"


def one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:500]


def limit_memory(case: Case, device: torch.device) -> None:
    """Apply run.memory_limit_mb: an address-space limit on CPU, an allocator fraction on GPU."""
    limit = case.run.memory_limit_mb
    if limit is None:
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit * 2**20 / total), device)
    else:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit * 2**20, limit * 2**20))


def prepare(case: Case, workload_name: str, device: torch.device, session: "RankSession | None" = None):
    """The seeded model on its device (a user's MoE implementation checked against the reference
    first; in a multi-rank case cut down to this rank's experts; compiled when `run.compile` asks)
    and the workload around it."""
    from harness.models import impl_check
    from harness.models.compile import compile_model
    from harness.models.transformer import build_model
    from harness.workloads import make_workload

    if case.run.threads is not None:
        torch.set_num_threads(case.run.threads)
    torch.manual_seed(case.run.seed)
    model = build_model(case, device)
    impl_check.check(model, case)
    sync = None
    if session is not None:
        from harness.parallel.model import parallelize

        sync = parallelize(model, session.groups, session.recorder)
    compile_model(model, case.run.compile)
    workload = make_workload(workload_name, model, case, device)
    if sync is not None and workload.training:
        sync.attach(workload.optimizer)
    return model, workload


def tiny_copy(case: Case, ranks: int = 1) -> Case:
    """The case at toy widths and one sequence per rank: the same code paths (modules, kernels,
    optimizer) at no cost."""
    model = case.model.model_copy(update=dict(
        d_model=8, n_heads=1, n_kv_heads=None, head_dim=None, d_ff=8, kv_lora_rank=8, rope_head_dim=2,
        q_lora_rank=8 if case.model.q_lora_rank else None,
        seq_len=min(case.model.seq_len, case.run.decode_tokens + 8),
    ))
    moe = case.moe
    if moe is not None:
        moe = moe.model_copy(update=dict(d_expert=None, d_shared=None, dense_residual=8 if moe.dense_residual else None))
    return case.model_copy(update=dict(model=model, moe=moe, run=case.run.model_copy(update=dict(batch_size=ranks))))


def warm_up(case: Case, workload_name: str, device: torch.device, ranks: int = 1) -> None:
    """Run the probe and a step on a tiny copy of the case, so one-time runtime allocations (lazy
    imports, FlopCounterMode's first use: about 70 MB) happen before the case's memory is measured.
    A Hugging Face model is not shrunk (a checkpoint fixes its shapes): its net peak includes them."""
    if case.model.source != "native":
        return
    tiny = tiny_copy(case, ranks)  # a rank reads its share of the batch; no collectives here
    model, workload = prepare(tiny, workload_name, device)
    probe(model, workload, tiny, device)
    workload.step()


def probe(model: torch.nn.Module, workload, case: Case, device: torch.device, window=None) -> dict[str, Any]:
    """The first step on freshly seeded weights: its loss and routing statistics are reproducible,
    whereas later steps depend on how many warmup steps the timing needed."""
    from harness.metrics import routing
    from harness.metrics.flops import measured_forward_flops_per_token
    from harness.models.compile import eager
    from harness.workloads import sample_tokens

    was_training = model.training
    model.eval()
    with torch.no_grad(), eager(), window.excluded() if window is not None else contextlib.nullcontext():
        measured = measured_forward_flops_per_token(model, sample_tokens(case, device)[:, :-1])
    model.train(was_training)
    routing.reset(model)
    workload.step()
    routing_case, routing_layers = routing.collect(model)
    return {
        "row": {"measured_flops_per_token": measured, "train_loss": workload.last_loss(), **routing_case},
        "routing_layers": routing_layers,
    }


def build_and_probe(case: Case, workload_name: str, device: torch.device, session: "RankSession | None" = None):
    """Build the case, probe it and run one more step, measuring the memory this takes from before the
    build (`peak_memory_net_*`): the second step is where a training peak holds the optimizer state
    the first one created. Returns (model, workload, probe result, net peak columns)."""
    from harness.metrics import memory

    ranks = session.groups.layout.world_size if session is not None else 1
    window = memory.NetPeak.open(device, warm_up=lambda: warm_up(case, workload_name, device, ranks))
    model, workload = prepare(case, workload_name, device, session)
    first = probe(model, workload, case, device, window)
    workload.step()
    return model, workload, first, window.close()


def after_training_problem(case: Case, session: "RankSession | None", run_dir: str | None) -> str | None:
    """Why this quality case cannot keep its weights or score lm-eval as asked (naming the key), or None.
    The suite refuses multi-rank quality cases when it loads; this guards direct callers, before any
    training, so what was asked is never skipped in silence."""
    asked = [key for key, on in (("run.save_weights", case.run.save_weights), ("run.lmeval_tasks", case.run.lmeval_tasks)) if on]
    if not asked:
        return None
    if session is not None:
        return f"{' and '.join(asked)}: not done for a multi-rank case (parallel.nproc {case.parallel.nproc}); the quality workload runs in one process"
    if run_dir is None:
        return f"{' and '.join(asked)}: need a run folder to keep the weights and lm-eval's results in (measure(..., run_dir=...))"
    return None


def measure(case: Case, workload_name: str, context: Calibration | None = None, process: int = 1,
            session: "RankSession | None" = None, run_dir: str | None = None) -> Optional[dict[str, Any]]:
    """The measured fields of a `WorkerResult`: the row's columns, per-layer routing and per-step losses.

    `process` says which of the case's run.processes this is: only the first runs the energy pass and,
    for a single-rank quality case, saves the weights and scores lm-eval in `run_dir` (the others time
    the steps alone). In a multi-rank case (`session`) every rank measures its share
    and rank 0 returns the group's result (`harness.parallel.measure`); the other ranks return None.
    """
    from harness import accounting
    from harness.metrics import contention, energy, memory, nvml, stability, utilisation
    from harness.metrics.statistics import latency_columns, summarize
    from harness.metrics.timing import time_steps
    from harness.models.compile import compile_seconds

    context = context or Calibration()
    first_process = process == 1
    if workload_name == "quality" and (problem := after_training_problem(case, session, run_dir)):
        raise ValueError(problem)
    device = session.device if session is not None else resolve_device(case.run.device)
    limit_memory(case, device)
    compiling_before = compile_seconds() if case.run.compile else None
    model, workload, first, net_peak = build_and_probe(case, workload_name, device, session)

    energy.cooldown(case.run.cooldown_s)
    gpu_start = nvml.gpu_state(device)
    memory.reset_peak(device)
    step, agree = (workload.step, bool) if session is None else (session.recorded(workload.step), session.agree)
    timings, disturbance = contention.watch(
        lambda: time_steps(step, device, case.run.warmup, case.run.repeats, case.run.min_time_s, agree=agree),
        device, torch.get_num_threads(), waited=None if session is None else session.waited_s,
        peers=0 if session is None else session.local_world - 1,
    )
    if session is not None:
        session.recorder.stop()
    stats = summarize(timings.seconds, seed=case.run.seed)
    peak = memory.peak_memory(device)

    row: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **latency_columns(stats, workload.tokens_per_step),
        "warmup_iterations": timings.warmup_iterations,
        "min_time_capped": timings.min_time_capped,
        "timer": timings.timer,
        "tokens_per_step": workload.tokens_per_step,
        "torch_threads": torch.get_num_threads(),
        **peak,
        **net_peak,
        **first["row"],
        **disturbance,
        "samples_s": timings.seconds,
    }
    per_token = accounting.step_flops_per_token(case.model, case.moe, workload.training, workload.context_len)
    peak_tflops = utilisation.device_peak(
        device.type, row["device_name"], case.run.dtype, case.run.peak_tflops, context.matmul_tflops,
        threads=torch.get_num_threads(),
    )
    row.update(utilisation.utilisation_columns(per_token, row["tokens_per_s"], peak_tflops))

    # Energy pass: separate from (and after) timing, so neither perturbs the other (docs/energy.md).
    idle = context.idle.get(device.type, IdlePower())
    if case.run.measure_energy and first_process:
        clock = {} if session is None else {"clock": session.clock}
        row.update(energy.measure_energy(
            workload.step, device, workload.tokens_per_step, case.run.energy_window_s,
            idle.idle_power_w, idle.cpu_idle_power_w, **clock,
        ))
    else:
        row.update(energy.skipped("run.measure_energy is false" if first_process else "measured in the first process only"))
    row.update({f"{k}_start": v for k, v in gpu_start.items()})
    row.update({f"{k}_end": v for k, v in nvml.gpu_state(device).items()})
    row.update(workload.finish())
    if workload_name == "quality" and first_process and (case.run.save_weights or case.run.lmeval_tasks):
        from harness.checkpoint import folder
        from harness.workloads.quality import after_training

        row.update(after_training(model, case, folder(run_dir, case.id), Path(run_dir)))
    if row.get("decode_tokens"):
        row["per_token_ms"] = row["latency_ms_median"] / row["decode_tokens"]
    if compiling_before is not None:
        row["compile_s"] = compile_seconds() - compiling_before
    if hasattr(model, "impl_label") and case.moe is not None:
        row["impl"] = model.impl_label
    steps = workload.step_log()
    if session is not None:
        from harness.parallel import measure as group

        records = session.gather(group.rank_record(session, row, len(timings.seconds), steps))
        if records is None:
            return None
        row = group.merge(records, case.parallel.expert, session.backend, case.run.seed)
        steps = group.merge_steps(records)
        group_peak = utilisation.Peak(
            None if peak_tflops.tflops is None else peak_tflops.tflops * len(records),
            peak_tflops.source if peak_tflops.tflops is None else f"{peak_tflops.source}, x {len(records)} ranks",
        )
        row.update(utilisation.utilisation_columns(per_token, row["tokens_per_s"], group_peak))
    if workload.training:
        token_choice = case.moe is not None and case.moe.router != "expert_choice"
        limit = stability.max_load_cv(case.moe.experts, case.moe.k) if token_choice else 0.0
        row.update(stability.assess(steps, row.get("val_loss"), load_cv_limit=limit))
    return {"row": row, "routing_layers": first["routing_layers"], "steps": steps}


def measure_interleaved(case: Case, other: Case, workload_name: str, process: int = 1) -> dict[str, Any]:
    """Time two cases in one process, alternating steps (A B A B ...), so slow drifts of the machine
    hit both sides alike; used only for the ratio, never for memory or energy.

    Even-numbered processes build and step the other case first (B A B A ...). Identical copies have
    come out ~10% apart with every step of a process agreeing (0.86x and 0.92x in the two processes
    of one A/A pair): an offset fixed for the process, such as where each model's tensors land,
    which the build order decides. With the order swapped between processes such an offset becomes
    a difference between processes, which the ratio's interval measures, not a bias none shows.
    """
    from harness.metrics import contention
    from harness.metrics.timing import time_pair

    device = resolve_device(case.run.device)
    limit_memory(case, device)
    swapped = process % 2 == 0
    first, second = (other, case) if swapped else (case, other)
    _, workload_first = prepare(first, workload_name, device)
    _, workload_second = prepare(second, workload_name, device)
    (x, y), disturbance = contention.watch(
        lambda: time_pair(workload_first.step, workload_second.step, device, case.run.warmup, case.run.repeats,
                          case.run.min_time_s),
        device, torch.get_num_threads(),
    )
    a, b = (y, x) if swapped else (x, y)
    return {"samples_a": a, "samples_b": b, "contention": disturbance}


def write_result_atomic(path: Path, result: WorkerResult) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result.model_dump(), default=str)))


def start_rank(case: Case) -> "RankSession":
    """Join the group torchrun started: one device per rank on GPU (LOCAL_RANK), the process groups of
    the case's layout with its collective timeout."""
    from harness.parallel.group import backend_for, init_from_env, local_rank, local_world_size
    from harness.parallel.measure import RankSession

    if "RANK" not in os.environ:
        raise RuntimeError("parallel.nproc > 1: this worker must be started by torch.distributed.run (the runner does)")
    device = resolve_device(case.run.device)
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise RuntimeError(f"parallel.nproc {case.parallel.nproc}: local rank {local_rank()} needs its own GPU, "
                               f"and this node has {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    backend = backend_for(case.parallel.backend, device)
    groups = init_from_env(case.parallel.expert, backend, case.parallel.timeout_s)
    return RankSession(groups, device, backend, local_rank(), local_world_size())


def rank_main(job: WorkerJob, result_path: Path) -> int:
    """One rank of a multi-rank case. Every rank writes its own status file; rank 0 also writes the
    group's result. A failing rank exits at once without tearing down the group: torchrun sees the
    exit and stops the other ranks, whose collectives would otherwise wait for the timeout."""
    import time

    from harness.parallel.comm import CollectiveError
    from harness.parallel.launcher import rank_path

    rank = int(os.environ.get("RANK", "0"))

    def leave(result: WorkerResult, code: int) -> None:
        write_result_atomic(rank_path(result_path, rank), result)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    joined: dict[str, "RankSession"] = {}

    def stopped(signum, frame):  # noqa: ARG001 - signal handler signature
        name = signal.Signals(signum).name
        session = joined.get("session")
        if session is not None and not session.recorder.inside:
            # not waiting on a peer when stopped: if the others' collectives timed out, it was waiting for this one
            leave(WorkerResult(status="failed", error=f"stopped by torchrun ({name}) outside any collective, after "
                               "another rank failed", victim=True, outside=True, at=time.time()), 128 + signum)
        leave(WorkerResult(status="failed", error=f"stopped by torchrun ({name}) after another rank failed",
                           victim=True, at=time.time()), 128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    try:
        session = joined["session"] = start_rank(job.case)
        measured = measure(job.case, job.workload, job.context, job.process, session)
    except Exception as exc:  # noqa: BLE001 - every failure must become a row, never a lost case
        traceback.print_exc()
        leave(WorkerResult(status=classify(exc), error=one_line(exc), victim=isinstance(exc, CollectiveError),
                           at=time.time()), 1)
    if measured is not None:
        measured["row"]["worker_start"] = "exec"
        write_result_atomic(result_path, WorkerResult(status="ok", **measured))
    torch.distributed.destroy_process_group()
    write_result_atomic(rank_path(result_path, rank), WorkerResult(status="ok"))
    return 0


def main(argv: list[str], start: str = "exec") -> int:
    """`start` says how this process began (`worker_start`): a fresh interpreter or a fork of the
    preloaded forkserver (`harness.forkserver`)."""
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = read_versioned(WorkerJob, json.loads(job_path.read_text()), JOB_VERSION, str(job_path))
    if job.case.parallel.nproc > 1 and job.pair_with is None:
        return rank_main(job, result_path)
    try:
        if job.pair_with is not None:
            measured = measure_interleaved(job.case, job.pair_with, job.workload, job.process)
        else:
            measured = measure(job.case, job.workload, job.context, job.process, run_dir=job.run_dir)
            measured["row"]["worker_start"] = start
        result = WorkerResult(status="ok", **measured)
    except Exception as exc:  # noqa: BLE001 - every failure must become a row, never a lost case
        traceback.print_exc()
        result = WorkerResult(status=classify(exc), error=one_line(exc))
    write_result_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
