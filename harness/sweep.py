"""Expand a suite into cases: the sweep grid and zip groups, then one derived dense baseline per rule.

With `calibrate: aa` each MoE case also gets an identical copy (`baseline='aa_copy'`) whose
baseline is the case itself: an A/A pair measured and judged exactly like a real one.

Baselines are ordinary dense cases; an MoE configuration that needs the same dense model shares it
(the case id is a hash of the config, so equal configs collapse to one case).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import ValidationError

from harness import accounting
from harness.config import INT64_MAX, Case, MoEConfig
from harness.suite import Suite, SuiteError, format_validation_error, workload_problem


@dataclass
class Expansion:
    """The cases of a suite in run order, and who is matched to whom."""

    cases: list[Case] = field(default_factory=list)
    baseline_of: dict[str, dict[str, str]] = field(default_factory=dict)  # moe id -> {rule: dense id}
    serves: dict[str, list[str]] = field(default_factory=dict)  # dense id -> moe ids

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def by_id(self) -> dict[str, Case]:
        return {case.id: case for case in self.cases}


def _axes(suite: Suite) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    axes = [((key,), [(v,) for v in values]) for key, values in suite.sweep.grid.items()]
    for group in suite.sweep.zip:
        keys = tuple(group)
        axes.append((keys, list(zip(*group.values()))))
    if suite.run.seeds:  # replication: the innermost axis, so a configuration's seeds run one after another
        axes.append((("run.seed",), [(seed,) for seed in suite.run.seeds]))
    return axes


def sweep_points(suite: Suite) -> list[dict[str, Any]]:
    """Every assignment of the swept keys, in a deterministic order (grid first, then zip groups)."""
    axes = _axes(suite)
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        point: dict[str, Any] = {}
        for (keys, _), values in zip(axes, combo):
            point.update(zip(keys, values))
        points.append(point)
    return points


def _where(suite: Suite, point: dict[str, Any]) -> str:
    where = ", ".join(f"{k}={v!r}" for k, v in point.items())
    return f"sweep point ({where}): " if point else f"suite '{suite.name}': "


def _apply_family(data: dict[str, Any], suite: Suite, point: dict[str, Any]) -> None:
    """`model.config` names a Hugging Face family: its architecture fills every key that neither the
    suite (or its preset) nor this sweep point sets."""
    from harness.models.hf.families import FAMILIES, defaults

    family = data["model"].get("config")
    if not isinstance(family, str) or family not in FAMILIES:
        return  # none, or one the schema refuses with the list of families
    for section, fills in zip(("model", "moe"), defaults(family)):
        given = getattr(suite, section).model_fields_set
        for key, value in fills.items():
            if key not in given and f"{section}.{key}" not in point:
                data[section][key] = value


def _drop_inapplicable(data: dict[str, Any]) -> None:
    """Reset (valid) keys the case's source ignores, so a sweep never measures one model twice under
    two ids; an invalid value stays for the schema to refuse."""
    from harness.models.hf.families import FAMILIES

    model, moe, run = data["model"], data["moe"], data["run"]
    if model.get("source") == "hf":
        if isinstance(moe.get("impl"), str):
            moe["impl"] = MoEConfig.model_fields["impl"].default  # hf: run.hf_experts_implementation
        if isinstance(moe.get("loss_reduction"), str):
            moe["loss_reduction"] = MoEConfig.model_fields["loss_reduction"].default  # transformers' own loss
    else:
        if model.get("config") in FAMILIES:
            model["config"] = None  # native: the family only filled in the architecture
        if isinstance(run.get("hf_experts_implementation"), str):
            run["hf_experts_implementation"] = None


def _source_problem(case: Case) -> str | None:
    """Why a Hugging Face case cannot be built: a key its family (or checkpoint) cannot express."""
    if case.model.source != "hf":
        return None
    if case.parallel.nproc > 1:
        return f"parallel.nproc={case.parallel.nproc}: a Hugging Face model runs in one process here (parallel.nproc: 1)"
    from harness.models.hf import families

    try:
        if case.model.path is not None:
            families.checkpoint_conflicts(case.model, case.moe)
        families.check(case.model, case.moe)
    except families.Unexpressible as exc:
        return str(exc)
    return None


def _check_case(suite: Suite, point: dict[str, Any], case: Case) -> None:
    """What the run would fail on for this case: a model its source cannot build, a workload it cannot
    run, or a size past int64."""
    what = "" if case.kind == "moe" else f"its {case.baseline} baseline: "
    problem = _source_problem(case)
    if problem:
        raise SuiteError(f"{_where(suite, point)}{what}{problem}")
    for workload in suite.workloads:
        problem = workload_problem(case, workload)
        if problem:
            raise SuiteError(f"{_where(suite, point)}{what}{problem}")
    for key, value in accounting.summary(case.model, case.moe).items():
        if abs(value) > INT64_MAX:
            raise SuiteError(f"{_where(suite, point)}{what}{key} ({value:.3g}) does not fit a 64-bit integer; the model is too large")


def _moe_case(suite: Suite, point: dict[str, Any]) -> Case:
    base = {
        "kind": "moe",
        "model": suite.model.model_dump(),
        "moe": suite.moe.model_dump(),
        "run": suite.run.model_dump(),
        "parallel": suite.parallel.model_dump(),
    }
    data = copy.deepcopy(base)
    data["run"]["seeds"] = None  # each case runs one seed of the list; point sets it
    for key, value in point.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    _apply_family(data, suite, point)
    _drop_inapplicable(data)
    try:
        return Case.model_validate(data)
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, prefix=_where(suite, point))) from None


def dense_baseline(case: Case, rule: str) -> Case:
    """The dense case `rule` derives for an MoE case (`accounting.matched_dense`), for `run` and `plan`
    alike; run settings that only concern MoE layers are reset, so variants of one MoE configuration
    share their baseline, and it runs data parallel on the same ranks."""
    run = case.run.model_copy(update={"hf_experts_implementation": None, "eval_capacity_factor": None})
    return Case(
        kind="dense",
        model=accounting.matched_dense(case.model, case.moe, rule),
        run=run,
        baseline=rule,
        parallel=case.parallel.model_copy(update={"expert": 1}),  # same ranks, data parallel
    )


def expand(suite: Suite) -> Expansion:
    out = Expansion()
    seen: set[str] = set()

    def add(case: Case) -> None:
        if case.id not in seen:
            seen.add(case.id)
            out.cases.append(case)

    for point in sweep_points(suite):
        case = _moe_case(suite, point)
        if case.id in seen:
            continue
        _check_case(suite, point, case)
        add(case)
        out.baseline_of[case.id] = {}
        if suite.calibrate == "aa":
            twin = Case(kind="moe", model=case.model, moe=case.moe, run=case.run, baseline="aa_copy")
            add(twin)
            out.baseline_of[twin.id] = {"aa_copy": case.id}
        for rule in suite.baselines:
            dense = dense_baseline(case, rule)
            _check_case(suite, point, dense)
            add(dense)
            out.baseline_of[case.id][rule] = dense.id
            out.serves.setdefault(dense.id, []).append(case.id)
    return out
