"""Checks that run inside a spawned group of gloo ranks (see tests/test_parallel.py).

Every check compares the parallel computation with the single-process one on the same weights and
the same global batch, and returns max-abs differences (or flags) for the parent test to assert on.
Spawning ranks costs seconds (each imports torch), so one group runs every check.
"""
from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.models.moe.layer import MoELayer
from harness.models.transformer import build_model
from harness.parallel.comm import EXCHANGE, CommRecorder
from harness.parallel.group import ProcessGroups, init_from_env
from harness.parallel.model import parallelize

D_MODEL = 16
TOKENS = 24  # per rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, ep: int, check: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    groups = init_from_env(ep, "gloo", timeout_s=60)
    try:
        result = all_checks(groups, Path(out_dir)) if check == "all" else CHECKS[check](groups, Path(out_dir))
    finally:
        torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def run_group(world: int, ep: int, check: str, out: Path) -> list[dict]:
    """Spawn `world` gloo ranks running `check` (files they write go to `out`); every rank's result."""
    mp.start_processes(_rank_main, args=(world, free_port(), ep, check, str(out)), nprocs=world,
                       start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


# ----------------------------------------------------------------------------- the MoE layer

LAYER_CASES = {
    "top1_capacity_loop": dict(num_experts=4, top_k=1, capacity_factor=1.0, impl="loop"),
    "top2_dropless_grouped": dict(num_experts=4, top_k=2, capacity_factor=None, impl="grouped"),
    "top2_capacity_padded_shared": dict(num_experts=4, top_k=2, capacity_factor=0.75, impl="padded",
                                        num_shared_experts=1, shared_gate=True),
    "top2_noisy_importance_grouped": dict(num_experts=8, top_k=2, capacity_factor=1.25, impl="grouped",
                                          router="topk_softmax", renormalize=True),
    # every token prefers the first experts: the last rank's experts get no rows at all
    "skewed_empty_rank_loop": dict(num_experts=4, top_k=2, capacity_factor=None, impl="loop"),
    "skewed_empty_rank_padded_capacity": dict(num_experts=4, top_k=1, capacity_factor=1.5, impl="padded"),
    # round-robin routing sends exactly (ep-1)/ep of the assignments away: the accounting's volume
    "balanced_grouped": dict(num_experts=4, top_k=2, capacity_factor=None, impl="grouped", routing_mode="balanced"),
}


def _skew(layer: MoELayer) -> None:
    """Router rows of the second half of the experts strongly negative for positive inputs."""
    with torch.no_grad():
        half = layer.num_experts // 2
        layer.router.weight[:half].abs_()
        layer.router.weight[half:] = -layer.router.weight[half:].abs() - 1.0


def _layer_check(name: str, spec: dict, groups: ProcessGroups) -> dict[str, float]:
    layout = groups.layout
    model = ModelConfig(d_model=D_MODEL, d_ff=32)
    moe = MoEConfig(aux_loss_coef=0.1, z_loss_coef=0.01, importance_loss_coef=0.1, **spec)
    torch.manual_seed(0)
    reference = MoELayer(model, moe)
    skewed = name.startswith("skewed")
    if skewed:
        _skew(reference)
    gen = torch.Generator().manual_seed(1)
    x_all = torch.randn(layout.world_size * TOKENS, D_MODEL, generator=gen)
    if skewed:
        x_all = x_all.abs()
    c_all = torch.randn(x_all.shape, generator=gen)

    # single process: each EP group's tokens are one batch; data parallel averages over groups
    group_rows = TOKENS * layout.ep_size
    ref_grads = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    mine = layout.rank // layout.ep_size
    for g in range(layout.dp_size):
        ref = copy.deepcopy(reference)
        rows = slice(g * group_rows, (g + 1) * group_rows)
        x = x_all[rows].clone().requires_grad_()
        y, aux = ref(x)
        ((y * c_all[rows]).sum() / group_rows + aux).backward()
        for n, p in ref.named_parameters():
            ref_grads[n] += (p.grad if p.grad is not None else torch.zeros_like(p)) / layout.dp_size
        if g == mine:
            expected = ref, y.detach(), aux.detach(), x.grad, ref.tally.host()

    # expert parallel
    recorder = CommRecorder(torch.device("cpu"))
    layer = copy.deepcopy(reference)
    sync = parallelize(layer, groups, recorder)
    local = slice(layout.rank * TOKENS, (layout.rank + 1) * TOKENS)
    x = x_all[local].clone().requires_grad_()
    recorder.start_step()
    y, aux = layer(x)
    ((y * c_all[local]).sum() / TOKENS + aux).backward()
    sync()
    step = recorder.steps()[-1]

    ref, y_ref, aux_ref, xgrad_ref, tally_ref = expected
    within = slice((layout.rank % layout.ep_size) * TOKENS, (layout.rank % layout.ep_size + 1) * TOKENS)
    keep = layout.local_experts(moe.experts)
    out = {
        "output": _diff(y.detach(), y_ref[within]),
        "aux": abs(float(aux.detach()) - float(aux_ref)),
        "input_grad": _diff(x.grad, xgrad_ref[within] * layout.ep_size),
        "router_grad": _diff(layer.router.weight.grad, ref_grads["router.weight"]),
        "expert_grad": max(_diff(layer.experts.w_in.grad, ref_grads["experts.w_in"][keep.start:keep.stop]),
                           _diff(layer.experts.w_out.grad, ref_grads["experts.w_out"][keep.start:keep.stop])),
    }
    for loss, value in ref.last_losses.items():
        out[f"loss_{loss}"] = abs(float(layer.last_losses[loss]) - float(value))
    tally = layer.tally.host()
    out["tally"] = max(abs(a - b) for a, b in zip(tally["routed"], tally_ref["routed"]))
    for key in ("dropped", "rows", "entropy"):
        out["tally"] = max(out["tally"], abs(tally[key] - tally_ref[key]))
    if "shared.w_in.weight" in ref_grads:
        out["shared_grad"] = _diff(layer.shared.w_in.weight.grad, ref_grads["shared.w_in.weight"])
    out["expert_rows"] = step["expert_rows"]
    out["exchange_bytes"] = sum(step.get(f"{kind}_bytes", 0) for kind in EXCHANGE if kind != "counts")
    out["dropped"] = tally["dropped"]
    return out


def layer_checks(groups: ProcessGroups, out: Path) -> dict:  # noqa: ARG001
    return {name: _layer_check(name, spec, groups) for name, spec in LAYER_CASES.items()}


# ----------------------------------------------------------------------------- a training step

def train_case(kind: str) -> Case:
    """`moe_capacity`: capacity-limited with the balance loss, which are computed over the EP group, so
    they equal single-process training only when the EP group is the whole world. `moe_dropless`
    (per-token routing, z-loss only) and `dense` equal it under any layout."""
    model = ModelConfig(vocab_size=64, d_model=D_MODEL, n_layers=2, n_heads=2, d_ff=32, seq_len=8)
    run = RunSettings(batch_size=4, device="cpu", lr=1e-2)
    if kind == "dense":
        return Case(kind="dense", model=model, run=run)
    common = dict(num_experts=4, top_k=2, impl="grouped", router="sigmoid_bias", z_loss_coef=0.001)
    if kind == "moe_capacity":
        moe = MoEConfig(capacity_factor=1.0, aux_loss_coef=0.01, **common)
    else:
        moe = MoEConfig(capacity_factor=None, aux_loss_coef=0.0, **common)
    return Case(kind="moe", model=model, moe=moe, run=run)


def train(case: Case, groups: ProcessGroups | None, steps: int = 2) -> torch.nn.Module:
    """`steps` of the train_step workload, data- and expert-parallel when `groups` is given."""
    from harness.workloads import make_workload

    torch.manual_seed(case.run.seed)
    model = build_model(case)
    if groups is not None:
        sync = parallelize(model, groups, CommRecorder(torch.device("cpu")))
    workload = make_workload("train_step", model, case, torch.device("cpu"))
    if groups is not None:
        sync.attach(workload.optimizer)
    for _ in range(steps):
        workload.step()
    return model


def train_checks(groups: ProcessGroups, out: Path) -> dict:
    """Each rank saves its parameters after two steps; the parent compares them with single-process
    train_step on the global batch (outside any group)."""
    for kind in TRAIN_KINDS:
        if kind == "moe_capacity" and groups.layout.dp_size > 1:
            continue
        model = train(train_case(kind), groups)
        state = model.state_dict()  # buffers too: the sigmoid_bias router's expert bias must stay in step
        torch.save(state, out / f"{kind}-rank{groups.layout.rank}.pt")
    return {}


TRAIN_KINDS = ("moe_capacity", "moe_dropless", "dense")
CHECKS = {"layer": layer_checks, "train": train_checks}


def all_checks(groups: ProcessGroups, out: Path) -> dict:
    return {name: check(groups, out) for name, check in CHECKS.items()}
