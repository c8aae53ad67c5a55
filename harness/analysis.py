"""Load a run's results as a typed pandas DataFrame and pair each MoE row with its dense baseline.

This is the user-facing analysis API (`harness.load`, `harness.paired`) and what the report is
built on. It reads files only; it never imports torch, so notebooks and CI stay light.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import aa
from harness.contracts import ContractError, RunInfo, read_run_info
from harness.errors import UserError
from harness.metrics import stability
from harness.metrics.statistics import pooled_ratio_intervals, pooled_variance
from harness.results import BOOL, COLUMNS, FLOAT, INT, STRING, columns_in
from harness.values import as_number
from harness.verdict import (
    DEFAULT_MARGIN,
    WIDE,
    Disturbance,
    Verdict,
    decide,
    disturbances,
    fewest_processes,
    unreliable_sentence,
)

DTYPES: dict[str, str] = {name: column.dtype for name, column in COLUMNS.items()}
"""Every known result column and the pandas dtype `load` gives it (from the schema in `results.py`).

Strings use pandas' nullable "string" dtype, counts the nullable "Int64" (dense rows have no
`num_experts`), measurements float64 with NaN where not measured, flags the nullable "boolean".
Columns a run did not record are added, all missing, and listed in `df.attrs["absent_columns"]`.
"""

# The column a missing value of this metric is explained by (a '*_source' column).
SOURCE_OF = {name: column.source for name, column in COLUMNS.items() if column.source}
ROUTING_COLUMNS = columns_in("routing")

_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class RunError(UserError):
    """A run folder that cannot be read (missing or malformed results); a user-fixable problem."""


def _results_file(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    for name in ("results.parquet", "results.csv"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise RunError(f"{run_dir}: no results.parquet or results.csv (is this a run folder?)")


def _as_bool(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(BOOL)
    text = series.astype("string").str.strip().str.lower()
    return text.map(_BOOL_TEXT, na_action="ignore").astype(object).astype(BOOL)


def _coerce(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == BOOL:
        return _as_bool(series)
    if dtype == STRING:
        out = series.astype("string")
        return out.mask(out.str.strip() == "")
    numeric = pd.to_numeric(series, errors="coerce")
    if dtype == INT:
        rounded = numeric.round()
        if not (rounded.isna() | (rounded == numeric)).all():
            return numeric.astype(FLOAT)
        return rounded.astype(INT)
    return numeric.astype(FLOAT)


def _empty(index: pd.Index, dtype: str) -> pd.Series:
    return pd.Series(pd.array([None] * len(index), dtype=dtype), index=index)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every schema column it has in its schema dtype; other columns as they are."""
    out = frame.copy()
    for col in out.columns:
        if col in DTYPES:
            out[col] = _coerce(out[col], DTYPES[col])
    return out


def load(run_dir: str | Path) -> pd.DataFrame:
    """Results of a run as a DataFrame, one row per (case, workload), with the dtypes in `DTYPES`.

    Reads `results.parquet` when present, else `results.csv` (ids such as '120e45678901' stay
    strings). Unknown extra columns are kept as read.
    """
    path = _results_file(Path(run_dir))
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            text_cols = [c for c, t in DTYPES.items() if t in (STRING, BOOL)]
            df = pd.read_csv(path, dtype={c: "string" for c in text_cols}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise RunError(f"{path}: empty results file") from None
    except (ValueError, OSError) as exc:  # a damaged table (pyarrow and pandas parse errors are ValueErrors)
        df = _from_journal(Path(run_dir))
        if df is None:
            raise RunError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    for col in ("case_id", "kind", "workload", "status"):
        if col not in df.columns:
            raise RunError(f"{path}: required column {col!r} is missing")
    absent = [c for c in DTYPES if c not in df.columns]
    df = typed(df)
    if absent:
        df = pd.concat([df, pd.DataFrame({col: _empty(df.index, DTYPES[col]) for col in absent})], axis=1)
    df.attrs["absent_columns"] = absent
    df.attrs["source"] = str(path)
    if Path(run_dir).is_dir():
        mark_stalled(df, load_steps(run_dir))
    return df


SIBLING_KEYS = ("workload", "corpus", "quality_steps", "d_model", "n_layers", "seq_len", "batch_size")
"""Quality rows that agree on these trained the same shape for the same budget on the same text: siblings."""


def mark_stalled(df: pd.DataFrame, steps: pd.DataFrame | None) -> None:
    """Mark quality rows that stalled relative to their siblings as unstable (in place; see
    `harness.metrics.stability.stalled`). A row already unstable keeps its reason, with this one added."""
    if steps is None or "loss" not in steps.columns or "quality_steps" not in df.columns:
        return
    quality = df[(df["workload"] == "quality") & (df["status"] == "ok") & df["val_loss"].notna()]
    if len(quality) < 2:
        return
    curves = {case: group.sort_values("step")["loss"].astype(float).tolist()
              for case, group in steps[steps["workload"] == "quality"].groupby("case_id")}
    for _, group in quality.groupby(list(SIBLING_KEYS), dropna=False):
        for idx, row in group.iterrows():
            if row["case_id"] not in curves:
                continue
            siblings = [(curves[r["case_id"]], float(r["val_loss"])) for j, r in group.iterrows()
                        if j != idx and r["case_id"] in curves]
            reason = stability.stalled(curves[row["case_id"]], float(row["val_loss"]), siblings)
            if reason is None:
                continue
            already = not pd.isna(df.at[idx, "unstable"]) and bool(df.at[idx, "unstable"])
            df.at[idx, "unstable_reason"] = f"{df.at[idx, 'unstable_reason']}; {reason}" if already else reason
            df.at[idx, "unstable"] = True


def _from_journal(run_dir: Path) -> pd.DataFrame | None:
    """The table rebuilt from the journal (`rows.jsonl`, the record the tables are written from), or None."""
    from harness.store import RunStore

    if not (run_dir / "rows.jsonl").is_file():
        return None
    store = RunStore(run_dir)
    return store.frame() if store.rows() else None


def load_run_info(run_dir: str | Path) -> RunInfo:
    """run.json of a run (suite, suite_yaml, fingerprint, started, finished, calibration), from any
    format version this harness reads; an empty `RunInfo` when the folder has none."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return RunInfo()
    try:
        doc = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise RunError(f"{path}: nested too deeply to be a run.json") from None
    try:
        return read_run_info(doc, str(path))
    except ContractError as exc:
        raise RunError(str(exc)) from None


def load_routing_layers(run_dir: str | Path) -> pd.DataFrame | None:
    """Per-layer routing statistics (routing_layers.csv), or None when the run has none."""
    path = Path(run_dir) / "routing_layers.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pd.read_csv(path, dtype={"case_id": "string", "workload": "string"})


def load_steps(run_dir: str | Path) -> pd.DataFrame | None:
    """The per-step record of the training rows (steps.csv), or None when the run has none."""
    path = Path(run_dir) / "steps.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pd.read_csv(path, dtype={"case_id": "string", "workload": "string"})


# Dense-baseline columns carried into `paired` (prefixed 'dense_').
DENSE_COLUMNS = [
    "case_id", "status", "error", "d_ff", "params_total", "params_active", "flops_per_token",
    "train_flops_per_token", "tokens_per_s", "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high",
    "noisy", "peak_memory_bytes", "peak_memory_net_bytes", "energy_j_per_token", "energy_source", "achieved_tflops",
    "val_loss", "unstable", "unstable_reason", "processes", "contended", "contention_reason",
]

RATIOS = {
    "throughput_ratio": "tokens_per_s",
    "latency_ratio": "latency_ms_median",
    "memory_ratio": "peak_memory_net_bytes",
    "energy_per_token_ratio": "energy_j_per_token",
    "quality_ratio": "val_loss",
}
"""Ratio column -> metric; each ratio is MoE / dense, so it favours MoE above 1 when more of the metric is better."""


def better_above_one(ratio: str) -> bool:
    """Whether a `RATIOS` column above 1 favours the numerator, from its metric's direction in the schema."""
    return COLUMNS[RATIOS[ratio]].higher_is_better

_BASELINE_ID_COLUMNS = {"flop_matched": ("matched_to", "param_matched_to"), "param_matched": ("param_matched_to", "matched_to"),
                        "aa_copy": ("matched_to",)}


def safe_ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    """num / den, NaN (never inf or 0) where either is missing, den <= 0 or num < 0."""
    return (num / den.where(den > 0)).where(num >= 0)


def paired(df: pd.DataFrame, baseline: str = "flop_matched", margin: float | None = None) -> pd.DataFrame:
    """One row per MoE row with its dense baseline (same workload), MoE/dense ratio columns and a verdict.

    The result holds the MoE row's own columns, the baseline's `DENSE_COLUMNS` prefixed `dense_`,
    `dense_baseline` (the rule), the `RATIOS` columns and throughput/latency ratio CIs. A ratio is
    NaN unless both rows are 'ok' and both values were measured; MoE rows without a measured
    baseline are kept (ratios NaN).

    `verdict` (faster | slower | same | unreliable; empty when the pair was not measured) and
    `verdict_reason` come from `harness.verdict.decide` on the throughput ratio's CI and both rows'
    `contended`/`unstable` flags. Its equivalence margin is `margin`, else the run's A/A spread when
    the run calibrated (`calibrate: aa`), else `verdict.DEFAULT_MARGIN`.

    `baseline='aa_copy'` pairs each A/A copy (left, as 'MoE') with the case it copies ('dense_' columns).

    Throughput-ratio CI: for interleaved pairs, a t interval on the processes' log ratios with the
    variance pooled over the run's pairs of the workload (method 'interleaved, pooled over N pairs
    (D df)'), or the run's own bootstrap interval when it cannot be pooled (method 'interleaved');
    otherwise the box of the two latency CIs,
    lo = r * (dense_ci_low / dense_median) * (moe_median / moe_ci_high), hi likewise with the
    other bounds (= dense_ci_low / moe_ci_high when throughput = tokens / median latency;
    method 'latency_ci_bounds'). With two independent 95% intervals it covers the true ratio with
    probability >= 90% and is wider than a joint interval.
    """
    if baseline not in _BASELINE_ID_COLUMNS:
        raise ValueError(f"baseline must be one of {sorted(_BASELINE_ID_COLUMNS)}, got {baseline!r}")
    originals = (df["kind"] == "moe") & df["baseline"].isna()
    if baseline == "aa_copy":
        moe, dense = df[df["baseline"] == "aa_copy"].copy(), df[originals]
    else:
        moe, dense = df[originals].copy(), df[(df["kind"] == "dense") & (df["baseline"] == baseline)]
    dense = dense.drop_duplicates(["case_id", "workload"], keep="last")
    dense_ids = set(dense["case_id"].dropna())

    def pick(row: pd.Series) -> Any:
        for col in _BASELINE_ID_COLUMNS[baseline]:
            value = row.get(col)
            if isinstance(value, str) and value in dense_ids:
                return value
        return pd.NA

    moe["_dense_id"] = pd.array([pick(r) for _, r in moe.iterrows()], dtype=STRING) if len(moe) else pd.array([], dtype=STRING)
    right = dense[[c for c in DENSE_COLUMNS if c in dense.columns] + ["workload"]].rename(
        columns={c: f"dense_{c}" for c in DENSE_COLUMNS}
    )
    out = moe.merge(right, how="left", left_on=["_dense_id", "workload"], right_on=["dense_case_id", "workload"])
    out = out.drop(columns="_dense_id")
    out.attrs = dict(df.attrs)
    out["dense_baseline"] = pd.array([baseline if isinstance(v, str) else pd.NA for v in out["dense_case_id"]], dtype=STRING)

    both_ok = (out["status"] == "ok") & (out["dense_status"] == "ok")
    both_ok = both_ok.fillna(False).astype(bool)
    for ratio, metric in RATIOS.items():
        out[ratio] = safe_ratio(_col(out, metric), _col(out, f"dense_{metric}")).where(both_ok)
    disturbed = {i: pair_disturbances(row) for i, row in out.iterrows()}
    _ratio_cis(out, both_ok, disturbed)
    measured = False
    if margin is None and baseline != "aa_copy" and (df["baseline"] == "aa_copy").any():
        out.attrs["aa"] = aa.summarize(paired(df, "aa_copy"))
        margin = aa.margin_from(out.attrs["aa"], DEFAULT_MARGIN)
        measured = out.attrs["aa"].spread is not None
    out.attrs["verdict_margin"] = DEFAULT_MARGIN if margin is None else margin
    _verdicts(out, both_ok, disturbed, out.attrs["verdict_margin"], measured)
    return out.reset_index(drop=True)


def main_rule(df: pd.DataFrame) -> str:
    """The pairs a run is judged by: flop-matched when it derived them, else param-matched, else (an
    A/A-only run) the A/A copies."""
    rules = set(df["baseline"].dropna().astype(str))
    return next((r for r in ("flop_matched", "param_matched", "aa_copy") if r in rules), "flop_matched")


def _verdicts(out: pd.DataFrame, both_ok: pd.Series, disturbed: dict[Any, list[Disturbance]], margin: float,
              margin_measured: bool) -> None:
    """`verdict`, `verdict_reason` and (when unreliable) `verdict_cause` per pair: the one rule
    (harness.verdict) on the throughput ratio, the pair's disturbances (`pair_disturbances`) and
    both rows' process counts."""
    found: list[Verdict | None] = []
    for ok, (i, row) in zip(both_ok, out.iterrows()):
        if not ok:
            side, state = ("MoE case", row.get("status")) if row.get("status") != "ok" else ("baseline", row.get("dense_status"))
            found.append(Verdict(pd.NA, f"not measured: {side} {'missing' if pd.isna(state) else state}"))
            continue
        found.append(decide(row["throughput_ratio"], row["throughput_ratio_ci_low"], row["throughput_ratio_ci_high"],
                            margin=margin, disturbed=disturbed[i], margin_measured=margin_measured,
                            processes=fewest_processes(row.get("processes"), row.get("dense_processes"))))
    out["verdict"] = pd.array([v.verdict for v in found], dtype=STRING)
    out["verdict_reason"] = pd.array([v.reason for v in found], dtype=STRING)
    out["verdict_cause"] = pd.array([v.cause for v in found], dtype=STRING)


def pair_disturbances(row: pd.Series) -> list[Disturbance]:
    """What withholds a pair's verdict: either side's own flags, and a disturbed interleaved pass (the
    measurement the pair's ratio comes from)."""
    return (disturbances(row, "MoE") + disturbances(row, "baseline", prefix="dense_")
            + disturbances(row, "interleaved pass", prefix="interleaved_"))


def verdict_of(row: pd.Series) -> Verdict | None:
    """A `paired` row's verdict as a `Verdict` (None when the pair was not measured), for summaries."""
    if pd.isna(row.get("verdict")):
        return None
    cause = row.get("verdict_cause")
    return Verdict(str(row["verdict"]), str(row.get("verdict_reason") or ""), None if pd.isna(cause) else str(cause))


def throughput_ratio_bounds(
    ratio: pd.Series, num_latency: tuple[pd.Series, ...], den_latency: tuple[pd.Series, ...]
) -> tuple[pd.Series, pd.Series]:
    """CI of a throughput ratio num/den from each side's (median, ci_low, ci_high) latency.

    Box method: lo = ratio * (den_low / den_median) * (num_median / num_high), hi symmetrically;
    NaN where any latency is missing or not positive.
    """
    n_med, n_lo, n_hi = num_latency
    d_med, d_lo, d_hi = den_latency
    valid = (n_med > 0) & (n_lo > 0) & (n_hi > 0) & (d_med > 0) & (d_lo > 0) & (d_hi > 0)
    lo = (ratio * (d_lo / d_med) * (n_med / n_hi)).where(valid)
    hi = (ratio * (d_hi / d_med) * (n_med / n_lo)).where(valid)
    return lo, hi


def latency_columns(df: pd.DataFrame, prefix: str = "") -> tuple[pd.Series, pd.Series, pd.Series]:
    return tuple(_col(df, f"{prefix}latency_ms_{s}") for s in ("median", "ci_low", "ci_high"))  # type: ignore[return-value]


def _ratio_cis(out: pd.DataFrame, both_ok: pd.Series, disturbed: dict[Any, list[Disturbance]]) -> None:
    moe_lat, dense_lat = latency_columns(out), latency_columns(out, "dense_")
    lo, hi = throughput_ratio_bounds(out["throughput_ratio"], moe_lat, dense_lat)
    lo, hi = lo.where(both_ok), hi.where(both_ok)
    method = pd.Series(pd.NA, index=out.index, dtype=STRING).mask(lo.notna() & hi.notna(), "latency_ci_bounds")

    # an interleaved measurement brings its own ratio and CI: use both together, never mix sources
    inter_lo, inter_hi = _col(out, "throughput_ratio_ci_low"), _col(out, "throughput_ratio_ci_high")
    inter = _col(out, "interleaved_throughput_ratio")
    use = both_ok & inter_lo.notna() & inter_hi.notna() & inter.notna()
    out["throughput_ratio"] = out["throughput_ratio"].mask(use, inter)
    lo, hi = lo.mask(use, inter_lo), hi.mask(use, inter_hi)
    method = method.mask(use, "interleaved")
    if "throughput_ratio_ci_method" in out.columns:  # keep the run's reason when the interleaved pair failed
        stated = out["throughput_ratio_ci_method"].astype(STRING)
        method = method.mask(~use & stated.str.startswith("unavailable").fillna(False), stated)
    lo, hi, method = _pooled_interleaved(out, use, lo, hi, method, disturbed)
    out["throughput_ratio_ci_low"], out["throughput_ratio_ci_high"] = lo, hi
    out["throughput_ratio_ci_method"] = method
    lat_ok = both_ok & (moe_lat[1] > 0) & (moe_lat[2] > 0) & (dense_lat[1] > 0) & (dense_lat[2] > 0)
    out["latency_ratio_ci_low"] = (moe_lat[1] / dense_lat[2]).where(lat_ok)
    out["latency_ratio_ci_high"] = (moe_lat[2] / dense_lat[1]).where(lat_ok)


def _pooled_interleaved(out: pd.DataFrame, use: pd.Series, lo: pd.Series, hi: pd.Series, method: pd.Series,
                        disturbed: dict[Any, list[Disturbance]]) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Interleaved pairs' intervals from the per-process log ratios, with the between-process variance
    pooled over the run's undisturbed pairs of the same workload (`statistics.pooled_variance` and
    `pooled_ratio_intervals`). With two processes a pair's own variance has one degree of freedom and
    Student's t widens its interval 9x; the pool has one per pair. Each interval is centred on the
    geometric mean of its processes' ratios, which becomes the pair's ratio. Runs that did not record
    the log ratios keep the bootstrap interval."""
    mean, var = _col(out, "interleaved_log_ratio_mean"), _col(out, "interleaved_log_ratio_var")
    count = _col(out, "interleaved_process_count")
    for _, index in out[use & mean.notna()].groupby("workload").groups.items():
        estimating = [i for i in index if not disturbed[i]]
        variance, dof = pooled_variance(var[estimating], count[estimating].fillna(0))
        found = pooled_ratio_intervals(mean[index], var[index], count[index].fillna(0), variance, dof)
        for i, (ratio, low, high) in zip(index, found):
            if np.isfinite(low) and np.isfinite(high):
                out.loc[i, "throughput_ratio"], lo[i], hi[i] = ratio, low, high
                method[i] = f"interleaved, pooled over {len(estimating)} pairs ({dof} df)"
    return lo, hi, method


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").astype(FLOAT)
    return pd.Series(np.nan, index=df.index, dtype=FLOAT)


def coverage(df: pd.DataFrame, column: str) -> tuple[int, int, str | None]:
    """(rows measured, rows that could have been, why not) for a metric among the 'ok' rows.

    The reason comes from the metric's `*_source` column when it has one (e.g. energy_source =
    'unavailable: no NVML'), so the report can say why a metric is missing instead of drawing 0.
    """
    ok = df[df["status"] == "ok"]
    if column in ROUTING_COLUMNS:
        ok = ok[ok["kind"] == "moe"]
    if ok.empty:
        return 0, 0, "no MoE case finished successfully" if column in ROUTING_COLUMNS else "no case finished successfully"
    if column not in df.columns or column in df.attrs.get("absent_columns", ()):
        return 0, len(ok), f"not recorded by this run (no '{column}' column)"
    measured = int(pd.to_numeric(ok[column], errors="coerce").notna().sum())
    if measured == len(ok):
        return measured, len(ok), None
    source = SOURCE_OF.get(column)
    missing = ok[pd.to_numeric(ok[column], errors="coerce").isna()]
    reasons: list[str] = []
    if source and source in missing.columns:
        reasons = sorted({str(v) for v in missing[source].dropna() if str(v).strip()})
    return measured, len(ok), "; ".join(reasons) or "not measured on this run"


def trust_notes(pairs: pd.DataFrame, df: pd.DataFrame, info: RunInfo | None = None) -> list[str]:
    """The sentences that belong above any verdict of a run: how many pairs are unreliable and what to
    do, the A/A calibration when the run has one, and a calibration drift warning. Used by the end of
    `run` and the top of the report, so both say the same."""
    notes = []
    verdicts = [verdict_of(row) for _, row in pairs.iterrows()] if len(pairs) else []
    contended = df["contended"].fillna(False).astype(bool) if "contended" in df.columns else pd.Series(False, index=df.index)
    loads = pd.concat([_col(df, "load_avg_start")[contended], _col(df, "load_avg_end")[contended]])
    load = float(loads.max()) if loads.notna().any() else None
    cores = info.fingerprint.get("cpu_count") if info is not None else None
    wide = [row for v, (_, row) in zip(verdicts, pairs.iterrows()) if v is not None and v.cause == WIDE]
    # a multi-rank group cannot alternate steps with another group: interleaving is no advice for it
    could = [row for row in wide if (as_number(row.get("world_size")) or 1) <= 1]
    interleaved = all(str(row.get("throughput_ratio_ci_method")).startswith("interleaved") for row in could)
    sentence = unreliable_sentence(verdicts, load=load, cores=cores, interleaved=interleaved)
    if sentence:
        notes.append(sentence)
    if "aa" in pairs.attrs:
        notes.append(pairs.attrs["aa"].sentence() + f"; verdicts call changes within ±{pairs.attrs['verdict_margin']:.0%} 'same'.")
    warning = ((info.speed if info is not None else None) or {}).get("warning")
    if warning:
        notes.append(f"Warning: {warning}.")
    return notes
