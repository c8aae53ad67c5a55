"""Expert-parallel MoE layer on 2 gloo ranks: how much of a training step is the all-to-all exchange.

    python -m benchmarks.ep_all_to_all                       # the docs/distributed.md table (CPU, fp32)
    python -m benchmarks.ep_all_to_all --tokens 4096 --d-model 512 --experts 8 --top-k 2

Each rank holds half the experts and routes its own tokens; one step is forward and backward of the
layer (`harness.parallel`: counts all-gather, dispatch and combine all-to-alls, their backwards, the
routing statistics all-reduce), then the gradient all-reduce. Every collective is timed by the harness's `CommRecorder` (perf_counter around
the blocking gloo call, no barrier), so a rank's exchange time includes waiting for its peer. Prints,
per configuration, the median step time, the median time in the exchange and its share of the step
(mean over ranks), the bytes a rank sends per step and the gradient all-reduce time. The ranks run a
fixed number of steps, one intra-op thread each. Routing is `balanced` by default, so each rank sends
exactly half its assignments away.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from harness.config import ModelConfig, MoEConfig
from harness.models.moe.layer import MoELayer
from harness.parallel.comm import CommRecorder
from harness.parallel.group import init_from_env
from harness.parallel.measure import EP_COLLECTIVES
from harness.parallel.model import parallelize


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIGS = [(512, 256), (2048, 256), (2048, 512), (8192, 512)]  # (tokens per rank, d_model)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    groups = init_from_env(world, "gloo", timeout_s=120)
    results = []
    for tokens, d_model in args.configs:
        torch.manual_seed(0)
        moe = MoEConfig(num_experts=args.experts, top_k=args.top_k, capacity_factor=None, impl=args.impl,
                        routing_mode=args.routing_mode, aux_loss_coef=0.0)
        layer = MoELayer(ModelConfig(d_model=d_model, d_ff=args.d_ff or 2 * d_model), moe)
        recorder = CommRecorder(torch.device("cpu"))
        sync = parallelize(layer, groups, recorder)
        x = torch.randn(tokens, d_model, generator=torch.Generator().manual_seed(rank), requires_grad=True)
        steps = []
        for i in range(args.warmup + args.repeats):
            if i == args.warmup:
                recorder.reset()
            recorder.start_step()
            start = time.perf_counter()
            y, aux = layer(x)
            (y.sum() + aux).backward()
            sync()
            steps.append(time.perf_counter() - start)
        comm = recorder.steps()
        results.append({
            "tokens": tokens, "d_model": d_model,
            "step_s": statistics.median(steps[args.warmup:]),
            "exchange_s": statistics.median(sum(s.get(f"{k}_s", 0.0) for k in EP_COLLECTIVES) for s in comm),
            "exchange_bytes": statistics.median(sum(s.get(f"{k}_bytes", 0) for k in EP_COLLECTIVES) for s in comm),
            "grad_sync_s": statistics.median(s.get("grad_sync_s", 0.0) for s in comm),
        })
    torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ep_all_to_all", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="tokens per rank (default: the table's configurations)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, help="expert width (default 2 x d_model)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--impl", default="grouped")
    parser.add_argument("--routing-mode", default="balanced", choices=["balanced", "learned"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    args.configs = [(args.tokens, args.d_model)] if args.tokens else CONFIGS
    world = 2
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(world, free_port(), args, out), nprocs=world, start_method="spawn")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    print(f"EP 2 on 2 gloo ranks, {args.experts} experts top-{args.top_k}, {args.impl}, {args.routing_mode} routing, "
          f"fp32, 1 thread per rank, forward+backward, median of {args.repeats} steps, mean over ranks")
    print(f"{'tokens/rank':>11} {'d_model':>7} {'step ms':>9} {'all-to-all ms':>13} {'share':>6} "
          f"{'MiB sent/rank':>13} {'grad sync ms':>12}")
    for i, (tokens, d_model) in enumerate(args.configs):
        per = [ranks[r][i] for r in range(world)]
        step = statistics.mean(p["step_s"] for p in per)
        exchange = statistics.mean(p["exchange_s"] for p in per)
        share = statistics.mean(p["exchange_s"] / p["step_s"] for p in per)
        sent = statistics.mean(p["exchange_bytes"] for p in per) / 2**20
        grad = statistics.mean(p["grad_sync_s"] for p in per)
        print(f"{tokens:>11} {d_model:>7} {step * 1e3:>9.2f} {exchange * 1e3:>13.2f} {share:>6.1%} {sent:>13.2f} "
              f"{grad * 1e3:>12.2f}")


if __name__ == "__main__":
    main()
