"""Load a YAML suite, apply `--set` overrides and validate it, turning every mistake into one clear message.

A suite is a base case (model, moe, run settings), the workloads to run on every case, a sweep over
dotted keys and the baselines to derive. Expansion into cases lives in `sweep.py`.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import BaselineKind, ModelConfig, MoEConfig, RunSettings


class SuiteError(Exception):
    """A suite problem a user can fix; the CLI prints it without a traceback and exits with 2."""


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
            if 0 in lengths.values():
                raise ValueError("zip group has an empty list")
        return groups


def _module_exists(name: str) -> bool:
    """Whether a user's workload module can be found, without importing (and running) it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the name is malformed
        return False


BUILTIN_WORKLOADS = ("train_step", "forward", "decode", "quality")


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="used in output folder names")
    description: str = Field(default="", description="free text, shown (escaped) in the report")
    model: ModelConfig = Field(default=ModelConfig(), description="the base model; `preset: NAME` starts from a published one")
    moe: MoEConfig = Field(default=MoEConfig(), description="the MoE layer of every MoE case")
    run: RunSettings = Field(default=RunSettings(), description="how each case is executed and measured")
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


    @field_validator("workloads")
    @classmethod
    def _known_workloads(cls, names: list[str]) -> list[str]:
        for name in names:
            module, _, function = name.partition(":")
            if function and not _module_exists(module):
                raise ValueError(f"workload {name!r}: no module {module!r} on the Python path")
            if ":" not in name and name not in BUILTIN_WORKLOADS:
                close = difflib.get_close_matches(name, BUILTIN_WORKLOADS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown workload {name!r} (known: {', '.join(BUILTIN_WORKLOADS)}){hint}")
        if len(set(names)) != len(names):
            raise ValueError("a workload is listed twice")
        return names


SWEEPABLE_SECTIONS = {"model": ModelConfig, "moe": MoEConfig, "run": RunSettings}


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


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
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
            lines.append(f"{path}{msg}" if e["type"] == "value_error" else f"{path}{msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(f"{source}: malformed YAML at {where}{problem}") from None
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    grid = (data.get("sweep") or {}).get("grid") or {}
    if key in grid:
        grid[key] = [value]
        return
    for group in (data.get("sweep") or {}).get("zip") or []:
        if key in group:
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
    try:
        preset = presets.resolve(name)
    except KeyError as exc:
        raise SuiteError(f"model.preset: {exc.args[0]}") from None
    data["model"] = {**preset["model"], **model}
    if "moe" in preset:
        data["moe"] = {**preset["moe"], **(data.get("moe") or {})}


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
            raise SuiteError(f"sweep.{key}: sweep keys start with model., moe. or run.{hint}")
        if field not in cls.model_fields:
            close = difflib.get_close_matches(field, list(cls.model_fields), n=1)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            raise SuiteError(f"sweep.{key}: unknown key{hint}")


def _values(suite: Suite, key: str, base: Any) -> set[Any]:
    """Every value a key takes across the sweep (grid and zip groups), or its base value."""
    swept = list(suite.sweep.grid.get(key, [])) + [v for group in suite.sweep.zip for v in group.get(key, [])]
    return set(swept) if swept else {base}


TRAINING_WORKLOADS = ("train_step", "quality")


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


def build_suite(data: dict[str, Any], source: str = "suite", overrides: tuple[str, ...] = ()) -> Suite:
    for assignment in overrides:
        apply_override(data, assignment)
    _resolve_preset(data)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, prefix=f"{source}: ")) from None
    _check_sweep_keys(suite)
    _check_dtype(suite)
    _check_device(suite)
    return suite


def load_suite(path: str | Path, overrides: tuple[str, ...] = ()) -> Suite:
    path = Path(path)
    try:
        text = path.read_text()
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
