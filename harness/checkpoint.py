"""Trained weights of a quality case, kept in the run folder so they can be evaluated later.

With `run.save_weights: true` the worker writes RUN/artifacts/<case_id>-quality/weights.pt (the
weights the quality workload scored: exactly `run.quality_steps` steps) and case.json (the resolved
case the model is rebuilt from). `load_trained(RUN, CASE)` gives that model back, ready for
`harness.lmeval_adapter.evaluate` or `python -m harness eval RUN CASE --tasks ...`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.config import Case
from harness.errors import UserError

ARTIFACTS = "artifacts"
WEIGHTS, CASE = "weights.pt", "case.json"


class CheckpointError(UserError):
    """No (unique) saved model for the case asked for; a user-fixable problem."""


def folder(run_dir: Path | str, case_id: str, workload: str = "quality") -> Path:
    return Path(run_dir) / ARTIFACTS / f"{case_id}-{workload}"


def save(model: torch.nn.Module, case: Case, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    (into / CASE).write_text(case.model_dump_json(indent=2))
    path = into / WEIGHTS
    torch.save({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}, path)
    return path


def find(run_dir: Path | str, case_id: str) -> Path:
    """The artifacts folder of the case whose id is (or starts with) `case_id`."""
    root = Path(run_dir) / ARTIFACTS
    found = sorted(p for p in root.glob(f"{case_id}*-quality") if (p / WEIGHTS).is_file()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        saved = sorted(p.name.removesuffix("-quality") for p in root.glob("*-quality")) if root.is_dir() else []
        hint = f" (saved: {', '.join(saved)})" if saved else " (none saved: set run.save_weights: true and run again)"
        raise CheckpointError(f"{run_dir}: no saved weights for case {case_id!r}{hint}")
    raise CheckpointError(f"{run_dir}: case {case_id!r} is ambiguous: {', '.join(p.name for p in found)}")


def load_trained(run_dir: Path | str, case_id: str, device: str = "cpu") -> torch.nn.Module:
    """The trained model of a quality case saved with `run.save_weights`, in eval mode."""
    from harness.models.transformer import build_model

    where = find(run_dir, case_id)
    case = Case.model_validate_json((where / CASE).read_text())
    torch.manual_seed(case.run.seed)
    model = build_model(case)
    model.load_state_dict(torch.load(where / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def eval_main(args) -> int:
    """CLI `eval RUN_DIR CASE --tasks T ...`: score a saved quality model with lm-eval, print each
    metric with its stderr, and keep lm-eval's results JSON next to the weights."""
    from harness.lmeval_adapter import lmeval_problem, shipped_tasks

    if problem := lmeval_problem():
        raise UserError(problem)
    unknown = sorted(set(args.tasks) - set(shipped_tasks()))
    if unknown:
        raise UserError(f"--tasks: unknown task(s) {', '.join(unknown)} (shipped: {', '.join(shipped_tasks())})")
    from harness.lmeval_adapter import evaluate
    from harness.workloads.quality import eval_capacity

    where = find(args.run_dir, args.case)
    model = load_trained(args.run_dir, args.case)
    case = Case.model_validate_json((where / CASE).read_text())
    results_path = where / f"lmeval_{'+'.join(args.tasks)}.json"
    with eval_capacity(model, case.run.eval_capacity_factor):
        results = evaluate(model, args.tasks, bootstrap_iters=args.bootstrap_iters, results_path=results_path)
    print(f"{where.name.removesuffix('-quality')}: lm-eval, zero-shot")
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or metric == "n":
                continue
            stderr = metrics.get(f"{metric}_stderr")
            shown = f"{value:.4f}" + (f" ± {stderr:.4f}" if isinstance(stderr, (int, float)) else "")
            print(f"  {task:<22} {metric:<16} {shown}  (n={metrics.get('n')})")
    print(f"lm-eval results: {results_path}")
    return 0
