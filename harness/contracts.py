"""The records that cross a process or file boundary, typed and versioned, and free of torch.

- `Calibration`: what the runner measured before any case (idle power, CPU matmul peak); it goes to
  every worker as its context and is stored in run.json.
- `WorkerJob`: the file the runner writes for one worker (`python -m harness.worker JOB RESULT`).
- `WorkerResult`: the file the worker writes back (or the launcher makes up when the worker died).
- `RunInfo`: a run folder's run.json. Its `format_version` says how to read it: files written before
  it existed (version 0) still load; a file from a newer harness is refused with a clear message.

Every record keeps keys it does not know (`extra="allow"`), so a run.json written by a newer harness
within the same format version loses nothing when an older one resumes it.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.config import Case
from harness.errors import UserError

JOB_VERSION = 1
RESULT_VERSION = 1
RUN_FORMAT_VERSION = 1

Status = Literal["ok", "failed", "oom", "timeout"]


class ContractError(UserError):
    """A record that this harness cannot read: malformed, or written in a newer format."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class IdlePower(_Record):
    """Idle watts of one device type and of the CPU packages; None (never 0) when no meter read it."""

    idle_power_w: Optional[float] = None
    cpu_idle_power_w: Optional[float] = None
    idle_window_s: Optional[float] = None
    idle_source: str = "unavailable: not measured"
    cpu_idle_source: str = "unavailable: not measured"


class Calibration(_Record):
    idle: dict[str, IdlePower] = Field(default_factory=dict, description="device type -> its idle power")
    matmul_tflops: dict[str, float] = Field(default_factory=dict, description="'<dtype>@<n>threads' -> TFLOP/s")


class WorkerJob(_Record):
    version: int = JOB_VERSION
    case: Case
    workload: str
    context: Calibration = Field(default_factory=Calibration)
    pair_with: Optional[Case] = Field(default=None, description="time this case interleaved with `case`")
    process: int = Field(default=1, ge=1, description="which of the case's run.processes this worker is")
    run_dir: Optional[str] = Field(default=None, description="the run folder, where a quality case keeps its weights and lm-eval results")


class WorkerResult(_Record):
    version: int = RESULT_VERSION
    status: Status
    error: Optional[str] = None
    row: dict[str, Any] = Field(default_factory=dict, description="measured result columns")
    routing_layers: list[dict[str, Any]] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(default_factory=list)
    samples_a: list[float] = Field(default_factory=list, description="interleaved pair: the first case's step times")
    samples_b: list[float] = Field(default_factory=list, description="interleaved pair: the second case's step times")
    contention: dict[str, Any] = Field(default_factory=dict, description="interleaved pair: the contention columns")


class RunInfo(_Record):
    format_version: int = RUN_FORMAT_VERSION
    suite: dict[str, Any] = Field(default_factory=dict, description="the resolved suite")
    suite_yaml: str = ""
    overrides: list[str] = Field(default_factory=list)
    shard: Optional[tuple[int, int]] = None
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    started: Optional[str] = None
    finished: Optional[str] = None
    interrupted: Optional[str] = None
    calibration: Optional[Calibration] = None
    merged_from: Optional[list[str]] = None
    incomplete: Optional[list[str]] = None
    speed: Optional[dict[str, Any]] = Field(default=None, description="calibration matmul probes at the start and end")
    aa: Optional[dict[str, Any]] = Field(default=None, description="A/A calibration summary, with calibrate: aa")

    @field_validator("suite", "fingerprint", "overrides", "suite_yaml", mode="before")
    @classmethod
    def _missing_is_empty(cls, value: Any, info: Any) -> Any:
        """A key written as null means 'not recorded': the same as absent."""
        return value if value is not None else cls.model_fields[info.field_name].get_default(call_default_factory=True)

    @property
    def suite_name(self) -> Optional[str]:
        name = self.suite.get("name")
        return str(name) if name is not None else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def _migrate_run_info(doc: dict[str, Any]) -> dict[str, Any]:
    """run.json of version 0 (no `format_version`): the calibration was stored as `baselines`."""
    doc = dict(doc)
    if "baselines" in doc:
        doc.setdefault("calibration", doc.pop("baselines"))
    doc["format_version"] = RUN_FORMAT_VERSION
    return doc


def read_run_info(doc: Any, source: str) -> RunInfo:
    """A run.json document as a `RunInfo`, from any format version this harness knows."""
    if not isinstance(doc, dict):
        raise ContractError(f"{source}: not a run.json object")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
        raise ContractError(f"{source}: run.json format version {version!r} is newer than this harness reads "
                            f"({RUN_FORMAT_VERSION}); upgrade moe-harness to read this run")
    if version < RUN_FORMAT_VERSION:
        doc = _migrate_run_info(doc)
    try:
        return RunInfo.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContractError(f"{source}: run.json key {where!r}: {first['msg']}") from None


def read_versioned(model: type[BaseModel], doc: Any, version: int, source: str) -> Any:
    """A job or result file as its model; a version other than this harness's is refused."""
    if not isinstance(doc, dict) or doc.get("version", version) != version:
        found = doc.get("version") if isinstance(doc, dict) else None
        raise ContractError(f"{source}: {model.__name__} version {found!r}, this harness reads {version}")
    return model.model_validate(doc)
