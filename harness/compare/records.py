"""What compare reads: one (case, workload)'s results, and a run's or a reference's set of them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.labels import case_label
from harness.values import as_flag, as_number, as_text, groups_ms, round_sample
from harness.verdict import Disturbance, disturbances

Key = tuple[str, str]


class CompareError(Exception):
    """Bad input for compare (missing run, unreadable reference, incomparable environments): exit 2."""


@dataclass(frozen=True)
class CaseResult:
    """One (case, workload) as compare needs it: status, headline metrics and raw latency samples."""

    case_id: str
    workload: str
    status: str
    kind: str | None = None
    label: str = ""
    error: str | None = None
    tokens_per_s: float | None = None
    latency_ms_median: float | None = None
    latency_ms_ci_low: float | None = None
    latency_ms_ci_high: float | None = None
    latency_ms_iqr: float | None = None
    peak_memory_bytes: float | None = None
    memory_source: str | None = None
    energy_j_per_token: float | None = None
    energy_source: str | None = None
    samples_ms: tuple[tuple[float, ...], ...] = ()  # per process, per step
    contended: bool = False
    contention_reason: str | None = None
    unstable: bool = False
    unstable_reason: str | None = None

    @property
    def key(self) -> Key:
        return (self.case_id, self.workload)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def disturbed(self) -> list[Disturbance]:
        return disturbances(asdict(self), "")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CaseResult:
        """From a run row (rows.jsonl or a results table); `samples_s` (per process) become milliseconds."""
        return cls(
            case_id=str(row["case_id"]), workload=str(row["workload"]), status=as_text(row.get("status")) or "unknown",
            kind=as_text(row.get("kind")), label=case_label(row), error=as_text(row.get("error")),
            tokens_per_s=as_number(row.get("tokens_per_s")), latency_ms_median=as_number(row.get("latency_ms_median")),
            latency_ms_ci_low=as_number(row.get("latency_ms_ci_low")),
            latency_ms_ci_high=as_number(row.get("latency_ms_ci_high")),
            latency_ms_iqr=as_number(row.get("latency_ms_iqr")), peak_memory_bytes=as_number(row.get("peak_memory_bytes")),
            memory_source=as_text(row.get("memory_source")), energy_j_per_token=as_number(row.get("energy_j_per_token")),
            energy_source=as_text(row.get("energy_source")), samples_ms=groups_ms(row.get("samples_s"), 1e3),
            contended=as_flag(row.get("contended")), contention_reason=as_text(row.get("contention_reason")),
            unstable=as_flag(row.get("unstable")), unstable_reason=as_text(row.get("unstable_reason")),
        )

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["samples_ms"] = [[round_sample(s) for s in group] for group in self.samples_ms]
        record["contended"] = record["contended"] or None
        record["unstable"] = record["unstable"] or None
        if self.peak_memory_bytes is not None:
            record["peak_memory_bytes"] = int(self.peak_memory_bytes)
        return {k: v for k, v in record.items() if v is not None and v != "" and v != []}

    @classmethod
    def from_json(cls, record: Any) -> CaseResult:
        """From a reference file's record. The file is user input, so every field is type-checked
        (ValueError naming the field): text is text, numbers are finite numbers, never booleans.
        `samples_ms` holds a list per process (version 2) or one flat list (version 1: one process)."""
        if not isinstance(record, dict):
            raise ValueError(f"a case record must be an object, got {type(record).__name__}")
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in record:
                continue
            value = record[name]
            if name == "samples_ms":
                nested = isinstance(value, list) and bool(value) and all(isinstance(g, list) for g in value)
                groups = value if nested else [value]
                if not all(isinstance(g, list) and all(_finite(v) for v in g) for g in groups):
                    raise ValueError(f"samples_ms must be lists of finite numbers (case {record.get('case_id')!r})")
                values[name] = groups_ms(value, 1.0)
            elif name in ("contended", "unstable"):
                values[name] = as_flag(value)
            elif spec.type.startswith("str") and not (isinstance(value, str) or (value is None and "None" in spec.type)):
                raise ValueError(f"{name} must be text, got {type(value).__name__} (case {record.get('case_id')!r})")
            elif spec.type.startswith("float") and not (value is None or _finite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r:.40} (case {record.get('case_id')!r})")
            else:
                values[name] = value
        return cls(**values)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Results:
    """A run or a stored reference: where it came from, its environment fingerprint and its cases."""

    source: str
    suite: str | None
    fingerprint: dict[str, Any]
    cases: dict[Key, CaseResult]
    aa_spread: float | None = None  # the A/A ratio spread the run measured (`calibrate: aa`), if any
