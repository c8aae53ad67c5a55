"""Load a YAML suite, apply `--set` overrides and validate it, turning every mistake into one clear message.

A suite is a base case (model, moe, run settings), the workloads to run on every case, a sweep over
dotted keys and the baselines to derive. Expansion into cases lives in `sweep.py`.
"""
from __future__ import annotations

import difflib
import json
import math
import reprlib
import typing
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, PositiveInt, ValidationError, field_validator

from harness import safe_yaml
from harness.config import (
    BUILTIN_WORKLOADS,
    BYTE_VOCAB,
    TRAINING_WORKLOADS,
    BaselineKind,
    Case,
    ModelConfig,
    MoEConfig,
    ParallelConfig,
    RunSettings,
    StrictConfig,
)
from harness.errors import UserError
from harness.plugins import plugin_problem


class SuiteError(UserError):
    """A suite problem a user can fix; the CLI prints it without a traceback and exits with 2."""


class Sweep(BaseModel):
    model_config = StrictConfig

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian product over dotted keys")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of keys whose value lists advance together"
    )

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"sweep axis {key!r} has no values")
        return grid

    @field_validator("zip")
    @classmethod
    def _same_length(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for group in groups:
            lengths = {key: len(values) for key, values in group.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zip group lists must have equal lengths, got {lengths}")
            if 0 in lengths.values() or not group:
                raise ValueError("zip group has an empty list")
        return groups


DEFAULT_MAX_CASES = 1000


class Suite(BaseModel):
    model_config = StrictConfig

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100, description="used in output folder names")
    description: str = Field(default="", description="free text, shown (escaped) in the report")
    model: ModelConfig = Field(default=ModelConfig(), description="the base model; `preset: NAME` starts from a published one")
    moe: MoEConfig = Field(default=MoEConfig(), description="the MoE layer of every MoE case")
    run: RunSettings = Field(default=RunSettings(), description="how each case is executed and measured")
    parallel: ParallelConfig = Field(default=ParallelConfig(), description="ranks per case and expert parallelism (docs/distributed.md)")
    workloads: list[str] = Field(
        default_factory=lambda: ["train_step", "forward"],
        min_length=1,
        description="built-in workload names, or 'package.module:function' for your own",
    )
    sweep: Sweep = Field(default=Sweep(), description="grid: {dotted.key: [values]} (cartesian product); zip: [{key: [values], ...}] (advance together)")
    baselines: list[BaselineKind] = Field(
        default_factory=lambda: ["flop_matched"], description="dense baselines to derive per MoE case: flop_matched and/or param_matched"
    )
    interleave: bool = Field(
        default=False, description="also time each MoE case against its baseline with alternating steps in one process, for a ratio with its own CI"
    )
    max_cases: PositiveInt = Field(
        default=DEFAULT_MAX_CASES,
        description="refuse the suite when its sweep points x (1 + baselines) exceed this, counted before anything is expanded; raise it deliberately for a big sweep",
    )
    calibrate: Optional[Literal["aa"]] = Field(
        default=None, description="aa: also measure each MoE case against an identical copy of itself (A/A), so the run states this machine's false-verdict rate and ratio spread"
    )

    @field_validator("workloads")
    @classmethod
    def _known_workloads(cls, names: list[str]) -> list[str]:
        for name in names:
            if ":" in name:
                problem = plugin_problem(name)
                if problem:
                    raise ValueError(problem)
            elif name not in BUILTIN_WORKLOADS:
                close = difflib.get_close_matches(name, BUILTIN_WORKLOADS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown workload {name!r} (known: {', '.join(BUILTIN_WORKLOADS)}){hint}")
        if len(set(names)) != len(names):
            raise ValueError("a workload is listed twice")
        return names


SWEEPABLE_SECTIONS = {"model": ModelConfig, "moe": MoEConfig, "run": RunSettings, "parallel": ParallelConfig}


def _model_fields(annotation: Any) -> Optional[type[BaseModel]]:
    """The pydantic model inside an annotation such as Optional[MoEConfig], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_fields(arg)
        if found is not None:
            return found
    return None


def _valid_names(loc: tuple[Any, ...]) -> list[str]:
    cls: Optional[type[BaseModel]] = Suite
    for part in loc:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return []
        cls = _model_fields(cls.model_fields[part].annotation)
    return list(cls.model_fields) if cls else []


def _bounded_repr() -> reprlib.Repr:
    """repr that stops after a few items and characters, so a huge or shared structure prints small."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxset, short.maxtuple = 2, 4, 4, 4, 4
    short.maxstring, short.maxother, short.maxlong = 60, 60, 40
    return short


_short = _bounded_repr()
MAX_ERRORS = 3


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line: the first few problems, each naming its dotted key, inputs shown in bounded form."""
    lines = []
    errors = err.errors()
    for e in errors[:MAX_ERRORS]:
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc)
        path = f"{prefix}{where}: " if where else prefix or "(top level): "
        if e["type"] == "extra_forbidden":
            names = _valid_names(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else (f"; valid keys: {', '.join(names)}" if names else "")
            lines.append(f"{path}unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}{msg}" if e["type"] == "value_error" else f"{path}{msg} (got {_short.repr(e.get('input'))})")
    if len(errors) > MAX_ERRORS:
        lines.append(f"and {len(errors) - MAX_ERRORS} more")
    return "; ".join(lines)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = safe_yaml.loads(text)
    except safe_yaml.YamlError as exc:
        raise SuiteError(f"{source}: {exc}") from None
    if data is None:
        raise SuiteError(f"{source}: the file is empty")
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key=value` to the raw suite; a swept key is pinned to the given value."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SuiteError(f"--set {assignment!r}: expected KEY=VALUE, e.g. model.d_model=128")
    try:
        value = safe_yaml.loads(raw) if raw.strip() else None
    except safe_yaml.YamlError as exc:
        raise SuiteError(f"--set {key}: the value is not valid YAML ({exc}); quote it to pass text") from None
    sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}
    grid = sweep.get("grid") if isinstance(sweep.get("grid"), dict) else {}
    if key in grid:
        grid[key] = [value]
        return
    groups = sweep.get("zip") if isinstance(sweep.get("zip"), list) else []
    for group in groups:
        if isinstance(group, dict) and key in group:
            raise SuiteError(f"--set {key}: this key is in a sweep zip group; edit the suite instead")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SuiteError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _resolve_preset(data: dict[str, Any]) -> None:
    """Expand `model: {preset: NAME, ...}` into the preset's model and moe blocks, user keys winning."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return
    from harness import presets

    name = model.pop("preset")
    if not isinstance(name, str):
        raise SuiteError(f"model.preset: expected a preset name, got {_short.repr(name)}; known: {', '.join(presets.names())}")
    if model.get("path") is not None:
        raise SuiteError("model.preset and model.path both fix the architecture; give one of them")
    try:
        preset = presets.resolve(name)
    except KeyError as exc:
        raise SuiteError(f"model.preset: {exc.args[0]}") from None
    data["model"] = {**preset["model"], **model}
    moe = data.get("moe")
    if "moe" in preset and (moe is None or isinstance(moe, dict)):
        data["moe"] = {**preset["moe"], **(moe or {})}


def _resolve_checkpoint(data: dict[str, Any]) -> None:
    """`model: {source: hf, path: DIR}`: the checkpoint's config.json fills model and moe; keys the
    suite gives stay as given (the sweep refuses any that contradict the checkpoint)."""
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("path"), str):
        return  # no checkpoint, or a malformed one the schema refuses
    from harness.models.hf import families

    try:
        fixed_model, fixed_moe = families.from_checkpoint(str(model["path"]))
    except families.Unexpressible as exc:
        raise SuiteError(str(exc)) from None
    data["model"] = {**fixed_model, **model}
    if fixed_moe is not None:
        data["moe"] = {**fixed_moe, **(data.get("moe") or {})}


def _check_implementations(suite: Suite) -> None:
    """User implementations must be importable; Hugging Face sources need transformers, and their
    experts implementation must be one the installed transformers offers."""
    for impl in _values(suite, "moe.impl", suite.moe.impl):
        if isinstance(impl, str) and ":" in impl and (problem := plugin_problem(impl, "moe.impl")):
            raise SuiteError(problem)
    if "hf" not in _values(suite, "model.source", suite.model.source):
        return
    from harness.models.hf.build import experts_implementations, transformers_problem

    problem = transformers_problem()
    if problem:
        raise SuiteError(f"model.source: hf: {problem}")
    offered = None
    for impl in _values(suite, "run.hf_experts_implementation", suite.run.hf_experts_implementation):
        if not isinstance(impl, str):
            continue  # None (transformers' choice), or a value the schema refuses
        if ":" in impl:
            if problem := plugin_problem(impl, "run.hf_experts_implementation"):
                raise SuiteError(problem)
            continue
        offered = offered or experts_implementations()
        if impl not in offered:
            raise SuiteError(
                f"run.hf_experts_implementation: {impl!r} is not offered by the installed transformers "
                f"(available: {', '.join(offered)}; or 'package.module:function')"
            )


def _check_sweep_keys(suite: Suite) -> None:
    keys = list(suite.sweep.grid) + [k for group in suite.sweep.zip for k in group]
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise SuiteError(f"sweep: key {key!r} appears more than once")
        seen.add(key)
        section, _, field = key.partition(".")
        cls = SWEEPABLE_SECTIONS.get(section)
        if cls is None:
            close = difflib.get_close_matches(section, list(SWEEPABLE_SECTIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SuiteError(f"sweep.{key}: sweep keys start with model., moe., run. or parallel.{hint}")
        if field not in cls.model_fields:
            close = difflib.get_close_matches(field, list(cls.model_fields), n=1)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            raise SuiteError(f"sweep.{key}: unknown key{hint}")
        if key == "model.path":
            raise SuiteError("sweep.model.path: a checkpoint fixes the whole model; run one suite per checkpoint")
        if key in ("run.seed", "run.seeds") and suite.run.seeds is not None:
            raise SuiteError(f"sweep.{key}: run.seeds already runs every case once per seed; give the seeds in one place")
        if key == "run.seeds":
            raise SuiteError("sweep.run.seeds: set run.seeds: [...] (every case once per seed) instead of sweeping it")


def _values(suite: Suite, key: str, base: Any) -> list[Any]:
    """Every value a key takes across the sweep (grid and zip groups), or its base value."""
    swept = list(suite.sweep.grid.get(key, [])) + [v for group in suite.sweep.zip for v in group.get(key, [])]
    return swept or [base]


def _check_dtype(suite: Suite) -> None:
    if "float16" in _values(suite, "run.dtype", suite.run.dtype) and set(TRAINING_WORKLOADS) & set(suite.workloads):
        raise SuiteError(
            "run.dtype: float16 training needs loss scaling (plain AdamW's eps underflows and weights turn NaN); "
            "use bfloat16 for train_step and quality, float16 only with forward and decode"
        )


def _check_device(suite: Suite) -> None:
    devices = _values(suite, "run.device", suite.run.device)
    if "cuda" in devices:
        import torch

        if not torch.cuda.is_available():
            raise SuiteError("run.device: 'cuda' requested but no CUDA GPU is available (use 'auto' or 'cpu')")


def sweep_size(suite: Suite) -> int:
    """How many sweep points the suite has (seeds included), counted without building them."""
    return math.prod(len(values) for values in suite.sweep.grid.values()) * math.prod(
        len(next(iter(group.values()))) for group in suite.sweep.zip
    ) * len(suite.run.seeds or [None])


def _check_size(suite: Suite) -> None:
    points = sweep_size(suite)
    derived = len(suite.baselines) + (suite.calibrate == "aa")  # an A/A copy per MoE case
    bound = points * (1 + derived)
    if bound > suite.max_cases:
        raise SuiteError(
            f"sweep: {points:,} sweep points x (1 + {derived} derived cases) = up to {bound:,} cases, over "
            f"max_cases ({suite.max_cases:,}); shrink the sweep or set max_cases (e.g. --set max_cases={bound})"
        )


def workload_problem(case: Case, workload: str) -> Optional[str]:
    """Why a built-in workload cannot run this case (naming the key), or None. The workloads refuse
    the same at run time, so a suite that loads never fails on these in a worker."""
    if workload == "decode":
        if case.moe is not None and case.moe.router == "expert_choice":
            return (
                "moe.router: expert_choice picks tokens across the whole batch and sequence, so it cannot decode one "
                "token at a time (it is not causal); use a token-choice router for the decode workload"
            )
        if case.run.decode_tokens >= case.model.seq_len:
            return f"run.decode_tokens ({case.run.decode_tokens}) must be smaller than model.seq_len ({case.model.seq_len}) for the decode workload"
    if workload == "quality" and case.moe is not None and case.run.eval_capacity_factor is not None:
        if case.moe.router == "expert_choice":
            return ("run.eval_capacity_factor: expert_choice has no token capacity to change at evaluation (each expert "
                    "takes a fixed share); use it with a token-choice router")
        if case.model.source == "hf":
            return "run.eval_capacity_factor: the hf source runs transformers' own experts; use it with model.source: native"
    if workload == "quality" and case.run.lmeval_tasks and case.model.source == "hf":
        return ("run.lmeval_tasks: the quality workload's lm-eval adapter reads the native byte-level model; score a "
                "Hugging Face checkpoint with harness.lmeval_adapter.evaluate_hf")
    if workload == "quality" and case.parallel.nproc > 1:
        return "parallel.nproc: the quality workload runs in one process; use train_step, forward or decode for multi-rank cases"
    if workload == "quality" and case.model.vocab_size < BYTE_VOCAB:
        return (
            f"model.vocab_size ({case.model.vocab_size}) is smaller than the quality corpus's {BYTE_VOCAB} byte values; "
            f"set model.vocab_size >= {BYTE_VOCAB} for the quality workload"
        )
    return None


def _check_lmeval(suite: Suite) -> None:
    """run.lmeval_tasks: lm-eval installed, and every task one of the shipped local ones."""
    asked = [t for tasks in _values(suite, "run.lmeval_tasks", suite.run.lmeval_tasks) if tasks for t in tasks]
    if not asked:
        return
    if "quality" not in suite.workloads:
        raise SuiteError("run.lmeval_tasks scores the quality workload's trained model; add quality to workloads")
    from harness.lmeval_adapter import lmeval_problem, shipped_tasks

    if problem := lmeval_problem():
        raise SuiteError(f"run.lmeval_tasks: {problem}")
    unknown = sorted(set(asked) - set(shipped_tasks()))
    if unknown:
        raise SuiteError(f"run.lmeval_tasks: unknown task(s) {', '.join(unknown)} (shipped: {', '.join(shipped_tasks())})")


def _check_compile(suite: Suite) -> None:
    if any(value not in (False, None) for value in _values(suite, "run.compile", suite.run.compile)):
        from harness.models.compile import torch_problem

        if problem := torch_problem():
            raise SuiteError(f"run.compile: {problem}")


def build_suite(data: dict[str, Any], source: str = "suite", overrides: tuple[str, ...] = ()) -> Suite:
    for assignment in overrides:
        apply_override(data, assignment)
    _resolve_preset(data)
    _resolve_checkpoint(data)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, prefix=f"{source}: ")) from None
    _check_sweep_keys(suite)
    _check_size(suite)
    _check_dtype(suite)
    _check_device(suite)
    _check_implementations(suite)
    _check_compile(suite)
    _check_lmeval(suite)
    return suite


def load_suite(path: str | Path, overrides: tuple[str, ...] = ()) -> Suite:
    path = Path(path)
    try:
        text = safe_yaml.read_text(path)
    except safe_yaml.YamlError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite ({exc.strerror})") from None
    return build_suite(parse_yaml(text, str(path)), source=str(path), overrides=overrides)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below" if type(value) in SWEEPABLE_SECTIONS.values() else "none"
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, (list, dict, str, bool)) else str(value)


def reference_markdown() -> str:
    """The suite reference README.md embeds (regenerate with `python -m harness.suite`)."""
    parts = []
    for title, cls, prefix in (("top level", Suite, ""), *((f"`{n}`", c, f"{n}.") for n, c in SWEEPABLE_SECTIONS.items())):
        parts += [f"#### {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            text = (field.description or "").replace("|", "/")
            parts.append(f"| `{prefix}{name}` | `{_default(field)}` | {text} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference_markdown())
