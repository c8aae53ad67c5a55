"""The report's seaborn figures, each a pure function of the results that may decline to draw.

Figures are plain `matplotlib.figure.Figure`s on an Agg canvas (no pyplot, no display, no global
style changes). A plot whose data was not measured returns `Plot(figure=None, missing=reason)` so
the report says what is missing and why; missing values are never drawn as 0.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from harness.analysis import coverage
from harness.config import BUILTIN_WORKLOADS
from harness.labels import capacity_label, config_label, dense_label
from harness.verdict import UNRELIABLE

PANEL_W, PANEL_H = 4.6, 3.4
CURVE_SMOOTHING = 25
MIB = 2**20


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    figure: Optional[Figure] = None
    missing: Optional[str] = None


def new_figure(nrows: int, ncols: int, height: float = PANEL_H) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_W * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _workloads(df: pd.DataFrame) -> list[str]:
    order = {w: i for i, w in enumerate(BUILTIN_WORKLOADS)}
    return sorted(df["workload"].dropna().unique(), key=lambda w: (order.get(w, len(order)), w))


def _experts_axis(ax, values: pd.Series) -> None:
    ticks = sorted({int(v) for v in values.dropna()})
    if len(ticks) >= 2 and min(ticks) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("experts")


def _ok_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[(pairs["status"] == "ok") & pairs["num_experts"].notna()]


def _vs_experts(
    pairs: pd.DataFrame, metric: str, name: str, title: str, ylabel: str, scale: float, why_missing: str | None
) -> Plot:
    """MoE metric vs experts, one line per top-k, with the matched dense baselines dashed."""
    caption = (f"{title} of each MoE configuration (solid) and of its FLOP-matched dense baseline (dashed), "
               "per top-k; one panel per workload. Where other settings (e.g. capacity factor) vary, "
               "the line is their median and the band their range.")
    ok = _ok_pairs(pairs)
    moe = ok[["workload", "num_experts", "top_k", metric]].assign(model="MoE", value=lambda d: d[metric])
    dense_col = f"dense_{metric}"
    parts = [moe]
    if dense_col in ok.columns:
        dense = ok[ok["dense_status"] == "ok"][["workload", "num_experts", "top_k", dense_col]]
        parts.append(dense.assign(model="dense baseline", value=dense[dense_col]))
    data = pd.concat(parts, ignore_index=True)[["workload", "num_experts", "top_k", "model", "value"]]
    data["value"] = pd.to_numeric(data["value"], errors="coerce").astype(float) / scale
    data = data[np.isfinite(data["value"])]
    if data.empty:
        return Plot(name, title, caption, missing=why_missing or "no measured values")
    data["top-k"] = "k=" + data["top_k"].astype("Int64").astype(str)
    data["num_experts"] = data["num_experts"].astype(float)
    workloads = _workloads(data)
    positive = data["value"][data["value"] > 0]
    log_y = len(positive) == len(data) and positive.max() > 20 * positive.min()
    if log_y:
        caption += " Values span more than 20x, so the y axis is logarithmic."
    fig, axes = new_figure(1, len(workloads))
    hue_order = sorted(data["top-k"].unique(), key=lambda s: int(s[2:]))
    for ax, workload in zip(axes[0], workloads):
        sub = data[data["workload"] == workload]
        sns.lineplot(sub, x="num_experts", y="value", hue="top-k", hue_order=hue_order, style="model",
                     style_order=["MoE", "dense baseline"], markers=True, estimator="median",
                     errorbar=("pi", 100), ax=ax, legend=ax is axes[0][-1])
        _experts_axis(ax, sub["num_experts"])
        ax.set_title(workload)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(0, float(data["value"].max()) * 1.1)
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=None)
    return Plot(name, title, caption, figure=fig)


def throughput_vs_experts(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    return _vs_experts(pairs, "tokens_per_s", "throughput_vs_experts", "Throughput", "tokens / s", 1.0,
                       coverage(df, "tokens_per_s")[2])


def memory_vs_experts(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    plot = _vs_experts(pairs, "peak_memory_net_bytes", "memory_vs_experts", "Peak memory",
                       "peak memory net of the process (MiB)", MIB, coverage(df, "peak_memory_net_bytes")[2])
    plot.caption += (" Each peak is measured from just before the model is built, net of what the process held "
                     "then (Python, torch), so it is the case's own memory.")
    sources = sorted({str(s) for s in df["peak_memory_net_source"].dropna()}) if "peak_memory_net_source" in df else []
    if sources:
        plot.caption += f" Measured as: {', '.join(sources)}."
    return plot


def memory_estimate_vs_measured(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    """Every row's analytic peak (harness.memory_model) against its measured net peak: the run checks the
    memory model it plans with."""
    name, title = "memory_estimate_vs_measured", "Memory estimate against measurement"
    caption = ("Estimated peak memory of each case and workload (harness.memory_model) against the peak measured "
               "from the model build (net of the process floor). The diagonal is a perfect estimate, the band "
               "+-15%.")
    columns = ("memory_estimate_bytes", "peak_memory_net_bytes")
    if any(c not in df.columns for c in columns):
        return Plot(name, title, caption, missing="this run recorded no memory estimates or net peaks")
    ok = df[(df["status"] == "ok")].copy()
    for c in columns:
        ok[c] = pd.to_numeric(ok[c], errors="coerce").astype(float) / MIB
    ok = ok[np.isfinite(ok[columns[0]]) & np.isfinite(ok[columns[1]]) & (ok[columns[1]] > 0)]
    if ok.empty:
        return Plot(name, title, caption, missing=coverage(df, "peak_memory_net_bytes")[2] or "no measured values")
    fig, axes = new_figure(1, 1)
    ax = axes[0][0]
    sns.scatterplot(data=ok, x="peak_memory_net_bytes", y="memory_estimate_bytes", hue="workload", style="kind", ax=ax)
    top = float(max(ok[columns[0]].max(), ok[columns[1]].max())) * 1.1
    line = np.array([0.0, top])
    ax.plot(line, line, color="0.3", linewidth=1)
    ax.fill_between(line, 0.85 * line, 1.15 * line, color="0.5", alpha=0.15, linewidth=0)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured peak, net (MiB)")
    ax.set_ylabel("estimated peak (MiB)")
    ratio = ok[columns[0]] / ok[columns[1]]
    caption += f" Estimate / measured: {ratio.min():.2f} to {ratio.max():.2f} over {len(ok)} rows."
    return Plot(name, title, caption, figure=fig)


def energy_per_token(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    plot = _vs_experts(pairs, "energy_j_per_token", "energy_per_token", "Energy per token", "energy (mJ / token)",
                       1e-3, coverage(df, "energy_j_per_token")[2])
    sources = sorted({str(s) for s in df["energy_source"].dropna()}) if "energy_source" in df else []
    if plot.figure is not None and sources:
        plot.caption += f" Energy source: {', '.join(sources)}."
    return plot


def _capacity_order(labels: pd.Series) -> list[str]:
    def key(label: str) -> float:
        return math.inf if label == "dropless" else float(label.removeprefix("cf"))

    return sorted(labels.unique(), key=key)


def ratio_grid(pairs: pd.DataFrame, workload: str, top_k: int, values: str = "throughput_ratio") -> pd.DataFrame:
    """Median MoE/dense throughput ratio, capacity factor (rows, 'dropless' last) x experts (columns).

    A cell with no measured ratio stays NaN (drawn blank), never 0. `values='unreliable'` gives 1 where
    any pair of the cell has an unreliable verdict (harness.verdict), 0 where none has.
    """
    sub = pairs[(pairs["workload"] == workload) & (pairs["top_k"] == top_k) & pairs["num_experts"].notna()].copy()
    sub["capacity"] = [capacity_label(v) for v in sub["capacity_factor"]]
    verdict = sub["verdict"] if "verdict" in sub.columns else pd.Series(pd.NA, index=sub.index)
    sub["unreliable"] = (verdict == UNRELIABLE).fillna(False).astype(float)
    grid = sub.pivot_table(index="capacity", columns="num_experts", values=values,
                           aggfunc="median" if values == "throughput_ratio" else "max", dropna=False)
    grid = grid.reindex(index=_capacity_order(sub["capacity"]), columns=sorted(sub["num_experts"].unique()))
    grid.columns = [int(c) for c in grid.columns]
    grid.index.name, grid.columns.name = "capacity factor", "experts"
    return grid.astype(float)


RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1, 1.25, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _log_ticks(vmin: float, vmax: float, most: int = 7) -> list[float]:
    """Round ratio ticks spread evenly in log space (always including 1)."""
    gap = (math.log(vmax) - math.log(vmin)) / most
    kept: list[float] = []
    for tick in sorted([t for t in RATIO_TICKS if vmin <= t <= vmax], key=lambda t: abs(math.log(t))):
        if all(abs(math.log(tick / k)) >= gap for k in kept):
            kept.append(tick)
    return sorted(kept)


def ratio_heatmap(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    name, title = "throughput_ratio_heatmap", "MoE / dense throughput ratio"
    caption = ("Throughput of each MoE configuration divided by that of its FLOP-matched dense baseline "
               "(> 1: MoE is faster), over experts x capacity factor; one panel per workload and top-k. "
               "Cells marked n/a were not measured (failed case or baseline); grey cells marked 'unreliable' have no "
               "verdict (a disturbed measurement or an interval too wide to tell; see the headline table).")
    ratios = pd.to_numeric(pairs.get("throughput_ratio"), errors="coerce") if len(pairs) else pd.Series(dtype=float)
    if ratios is None or not np.isfinite(ratios).any():
        reason = coverage(df, "tokens_per_s")[2] or "no MoE configuration and its baseline were both measured"
        return Plot(name, title, caption, missing=reason)
    finite = pairs[np.isfinite(ratios)]
    workloads = _workloads(finite)
    ks = sorted(int(k) for k in finite["top_k"].dropna().unique())
    lo, hi = float(ratios[np.isfinite(ratios)].min()), float(ratios[np.isfinite(ratios)].max())
    spread = max(abs(math.log(lo)), abs(math.log(hi)), math.log(1.05))
    norm = LogNorm(math.exp(-spread), math.exp(spread))  # symmetric in log: 0.5x and 2x equally far from 1
    cmap = sns.diverging_palette(15, 145, s=80, l=55, as_cmap=True)
    # seaborn's heatmap draws the figure on each call: lay out once at the end, one shared colorbar
    fig = Figure(figsize=(PANEL_W * len(workloads) + 0.8, PANEL_H * 0.9 * len(ks)))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(len(ks), len(workloads) + 1, width_ratios=[1] * len(workloads) + [0.05])
    cbar_ax = fig.add_subplot(gs[:, -1])
    colorbar_drawn = False
    for i, k in enumerate(ks):
        for j, workload in enumerate(workloads):
            ax = fig.add_subplot(gs[i, j])
            grid = ratio_grid(pairs, workload, k)
            if grid.empty:  # this top-k was not run for this workload
                ax.set_axis_off()
                ax.set_title(f"{workload}, top-k {k}: not measured")
                continue
            unreliable = (ratio_grid(pairs, workload, k, values="unreliable") > 0).to_numpy() & grid.notna().to_numpy()
            with warnings.catch_warnings():  # seaborn 0.13 calls a colormap method matplotlib deprecates
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # a panel whose every cell is masked
                sns.heatmap(grid, ax=ax, annot=True, fmt=".2f", cmap=cmap, norm=norm, mask=unreliable,
                            linewidths=0.5, linecolor="white", cbar=not colorbar_drawn, cbar_ax=cbar_ax,
                            cbar_kws={"label": "MoE / dense throughput"})
            colorbar_drawn = True
            for (r, c) in zip(*np.nonzero(grid.isna().to_numpy())):
                ax.text(c + 0.5, r + 0.5, "n/a", ha="center", va="center", color="0.45", fontsize="small")
            for (r, c) in zip(*np.nonzero(unreliable)):  # never coloured: a colour would be a verdict
                ax.add_patch(Rectangle((c, r), 1, 1, facecolor="0.9", edgecolor="white", linewidth=0.5))
                ax.text(c + 0.5, r + 0.5, f"{grid.iat[r, c]:.2f}\nunreliable", ha="center", va="center",
                        color="0.45", fontsize="small")
            ax.grid(False)
            ax.set_yticklabels([t.removeprefix("cf") for t in grid.index], rotation=0)
            ax.set_title(f"{workload}, top-k {k}")
    cbar_ax.yaxis.set_major_locator(FixedLocator(_log_ticks(norm.vmin, norm.vmax)))
    cbar_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    cbar_ax.yaxis.set_minor_locator(NullLocator())
    fig.set_layout_engine("constrained")
    return Plot(name, title, caption, figure=fig)


def dropped_vs_capacity(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    name, title = "dropped_vs_capacity", "Dropped tokens vs capacity factor"
    caption = ("Fraction of token-slots dropped for exceeding expert capacity, per capacity factor; colour: "
               "experts, marker style: top-k. Dropless cases have no capacity limit and are not shown.")
    moe = df[(df["kind"] == "moe") & (df["status"] == "ok")]
    data = moe[["workload", "num_experts", "top_k", "capacity_factor", "dropped_fraction"]].copy()
    data = data[data["capacity_factor"].notna() & data["dropped_fraction"].notna()]
    if data.empty:
        reason = coverage(df, "dropped_fraction")[2]
        if reason is None:
            reason = "every measured MoE case is dropless (no capacity factor)"
        return Plot(name, title, caption, missing=reason)
    data["experts"] = "E=" + data["num_experts"].astype(str)
    data["top-k"] = "k=" + data["top_k"].astype(str)
    data["capacity_factor"] = data["capacity_factor"].astype(float)
    data["dropped_fraction"] = data["dropped_fraction"].astype(float)
    workloads = _workloads(data)
    fig, axes = new_figure(1, len(workloads))
    hue_order = sorted(data["experts"].unique(), key=lambda s: int(s[2:]))
    for ax, workload in zip(axes[0], workloads):
        sub = data[data["workload"] == workload]
        sns.lineplot(sub, x="capacity_factor", y="dropped_fraction", hue="experts", hue_order=hue_order,
                     style="top-k", markers=True, estimator="median", errorbar=None, ax=ax,
                     legend=ax is axes[0][-1])
        ax.set_xticks(sorted(sub["capacity_factor"].unique()))
        ax.set_title(workload)
        ax.set_xlabel("capacity factor")
        ax.set_ylabel("dropped fraction")
        ax.set_ylim(0, max(float(data["dropped_fraction"].max()) * 1.1, 0.01))
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=None)
    return Plot(name, title, caption, figure=fig)


def learning_curves(df: pd.DataFrame, steps: Optional[pd.DataFrame]) -> Plot:
    """Training loss (running median) and held-out loss of every quality case against its steps."""
    name, title = "learning_curves", "Learning curves (quality)"
    caption = (f"Training loss (running median over {CURVE_SMOOTHING} steps, solid) and held-out loss (dots, at "
               "`run.eval_every` and at the end) of each quality case, MoE and dense; a row marked unstable is named "
               "with '(unstable)'. A run that leaves the byte-level plateau late ends far from its siblings.")
    rows = df[(df["workload"] == "quality") & (df["status"] == "ok")]
    if steps is None or rows.empty or "loss" not in steps.columns:
        return Plot(name, title, caption, missing="no per-step record of a quality case in this run (steps.csv)")
    labels = _case_labels(rows)
    data = steps[(steps["workload"] == "quality") & steps["case_id"].isin(list(labels))].copy()
    if data.empty:
        return Plot(name, title, caption, missing="no per-step record of a quality case in this run (steps.csv)")
    data["case"] = data["case_id"].map(labels)
    data = data.sort_values(["case", "step"])
    data["smoothed"] = data.groupby("case")["loss"].transform(
        lambda v: v.rolling(CURVE_SMOOTHING, min_periods=1).median())
    fig = Figure(figsize=(PANEL_W * 2.2, PANEL_H * 1.3), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = dict(zip(data["case"].unique(), sns.color_palette("tab10", data["case"].nunique())))
    sns.lineplot(data, x="step", y="smoothed", hue="case", palette=palette, ax=ax, linewidth=1.2)
    if "val_loss" in data.columns:
        held_out = data[pd.to_numeric(data["val_loss"], errors="coerce").notna()]
        sns.scatterplot(held_out, x="step", y="val_loss", hue="case", palette=palette, ax=ax, s=14, legend=False)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats per byte)")
    # the first tenth of training falls from ln 256; the interesting part is below it
    early = data[data["step"] == data.groupby("case")["step"].transform(lambda v: v.max() // 10)]["smoothed"]
    if len(early):
        ax.set_ylim(float(data["smoothed"].min()) * 0.97, float(early.max()) * 1.05)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=None, fontsize="small")
    return Plot(name, title, caption, figure=fig)


def _case_labels(rows: pd.DataFrame) -> dict[str, str]:
    """case_id -> a legend label: the configuration (with the settings that vary), seed, and whether it
    trained unstably; the case id is added where two cases would otherwise share a label."""
    from harness.report.tables import varying

    extras = varying(rows)
    labels = {}
    for _, row in rows.iterrows():
        label = "MoE " + config_label(row, extras) if row["kind"] == "moe" else dense_label(row)
        if pd.notna(row.get("seed")):
            label += f" seed {int(row['seed'])}"
        unstable = row.get("unstable")
        labels[row["case_id"]] = label + (" (unstable)" if unstable is not None and not pd.isna(unstable) and bool(unstable) else "")
    counts = pd.Series(list(labels.values())).value_counts()
    return {case: f"{label} [{case}]" if counts[label] > 1 else label for case, label in labels.items()}


PLOTS: list[Callable[[pd.DataFrame, pd.DataFrame], Plot]] = [
    throughput_vs_experts, ratio_heatmap, memory_vs_experts, memory_estimate_vs_measured, energy_per_token,
    dropped_vs_capacity,
]


def make_plots(df: pd.DataFrame, pairs: pd.DataFrame, steps: Optional[pd.DataFrame] = None,
               quality: Optional[pd.DataFrame] = None) -> list[Plot]:
    """Every report plot for one run (`df` from `load`, `pairs` from `paired`, `steps` from `load_steps`,
    `quality` from `harness.quality.to_target`), drawn or explained. A run with quality rows leads with
    its quality figures (loss curves over seeds, Pareto, paired val_loss) and ends with every case's
    learning curve."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        if not (df["workload"] == "quality").any():
            return [make(pairs, df) for make in PLOTS] + [val_loss_pairs(pairs, df)]
        if quality is None:
            from harness.quality import to_target

            quality = to_target(pairs, steps)
        first = [seed_curves(quality, steps), quality_pareto(quality, df), val_loss_pairs(quality, df)]
        return first + [make(pairs, df) for make in PLOTS] + [learning_curves(df, steps)]


# ----------------------------------------------------------------------------- quality

def _quality_label(row: pd.Series, extras: tuple[str, ...]) -> str:
    return "MoE " + config_label(row, extras)


def val_loss_pairs(pairs: pd.DataFrame, df: pd.DataFrame) -> Plot:
    """Paired dot plot: each MoE configuration's val_loss next to its baseline's, one line per seed."""
    from harness.report.tables import varying

    name, title = "val_loss_pairs", "Validation loss, MoE against its baseline"
    caption = ("Held-out loss after the training budget (nats per byte, lower is better) of each MoE configuration "
               "(right dot) and of its FLOP-matched dense baseline trained on the same seed (left dot); a line joins "
               "the two runs of one seed, so a line falling to the right is a seed the MoE won.")
    ok = pairs[(pairs["status"] == "ok") & (pairs["dense_status"] == "ok")] if len(pairs) else pairs
    if len(ok):
        ok = ok[pd.to_numeric(ok["val_loss"], errors="coerce").notna()
                & pd.to_numeric(ok["dense_val_loss"], errors="coerce").notna()]
    if not len(ok):
        reason = coverage(df, "val_loss")[2]
        if reason is None or reason == "not measured on this run":
            reason = "quality (val_loss) was not measured on this run"
        return Plot(name, title, caption, missing=reason)
    ok = ok.drop_duplicates("case_id")
    extras = varying(ok)
    labels = [config_label(row, extras) for _, row in ok.iterrows()]
    order = list(dict.fromkeys(labels))
    fig = Figure(figsize=(max(PANEL_W, 1.3 * len(order) + 1.5), PANEL_H * 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours = sns.color_palette("tab10", 2)
    for label, (_, row) in zip(labels, ok.iterrows()):
        x = order.index(label)
        dense, moe = float(row["dense_val_loss"]), float(row["val_loss"])
        ax.plot([x - 0.18, x + 0.18], [dense, moe], color="0.6", linewidth=0.9, zorder=1)
        ax.scatter([x - 0.18], [dense], color=colours[0], s=28, zorder=2, label="dense baseline")
        ax.scatter([x + 0.18], [moe], color=colours[1], s=28, zorder=2, label="MoE")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.set_xticks(range(len(order)), order, rotation=20 if len(order) > 4 else 0, ha="right" if len(order) > 4 else "center")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_xlabel("MoE configuration")
    return Plot(name, title, caption, figure=fig)


def _curve_frame(quality: pd.DataFrame, steps: pd.DataFrame, extras: tuple[str, ...]) -> pd.DataFrame:
    """Held-out points of both sides of every pair: configuration, side, seed, step (updates), val_loss."""
    held = steps[(steps["workload"] == "quality") & pd.to_numeric(steps.get("val_loss"), errors="coerce").notna()]
    held = held.assign(updates=held["step"].astype(float) + 1, val_loss=pd.to_numeric(held["val_loss"]).astype(float))
    parts = []
    for _, row in quality.iterrows():
        label = config_label(row, extras)
        for side, case in (("MoE", row["case_id"]), ("dense baseline", row["dense_case_id"])):
            part = held[held["case_id"] == case][["updates", "val_loss"]]
            parts.append(part.assign(configuration=label, side=side, seed=row.get("seed")))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def seed_curves(quality: pd.DataFrame, steps: Optional[pd.DataFrame]) -> Plot:
    """Held-out loss curves of each MoE configuration and its baseline: mean over seeds and their range."""
    from harness.report.tables import varying

    name, title = "quality_curves", "Held-out loss curves, MoE against its baseline"
    caption = ("Held-out loss (nats per byte) against training steps, every `run.eval_every` steps: the line is the "
               "mean over seeds, the band the range of the seeds; one panel per MoE configuration, with its "
               "FLOP-matched dense baseline. The dotted line is the loss both reached (the target of the "
               "time-to-target speedup) for the first seed.")
    if steps is None or quality.empty or "val_loss" not in steps.columns:
        return Plot(name, title, caption, missing="no held-out learning curve in this run (set run.eval_every)")
    extras = varying(quality)
    data = _curve_frame(quality, steps, extras)
    if data.empty or data.groupby(["configuration", "side"])["updates"].nunique().max() < 2:
        return Plot(name, title, caption, missing="no held-out learning curve in this run (set run.eval_every)")
    configs = list(dict.fromkeys(data["configuration"]))
    ncols = min(3, len(configs))
    nrows = math.ceil(len(configs) / ncols)
    fig, axes = new_figure(nrows, ncols)
    palette = dict(zip(["dense baseline", "MoE"], sns.color_palette("tab10", 2)))
    for ax in axes.flat[len(configs):]:
        ax.set_axis_off()
    for ax, config in zip(axes.flat, configs):
        sub = data[data["configuration"] == config]
        sns.lineplot(sub, x="updates", y="val_loss", hue="side", palette=palette, estimator="mean",
                     errorbar=("pi", 100), ax=ax, legend=ax is axes.flat[0], marker="o", markersize=3)
        first = quality[[config_label(r, extras) == config for _, r in quality.iterrows()]]
        target = pd.to_numeric(first.get("target_val_loss"), errors="coerce").dropna()
        if len(target):
            ax.axhline(float(target.iloc[0]), color="0.4", linestyle=":", linewidth=1)
        seeds = sub["seed"].dropna().nunique()
        ax.set_title(f"{config} ({seeds} seed{'s' * (seeds != 1)})")
        ax.set_xlabel("training steps")
        ax.set_ylabel("held-out loss (nats/byte)")
        late = sub[sub["updates"] >= sub["updates"].max() * 0.2]["val_loss"]
        if len(late):
            ax.set_ylim(float(late.min()) - 0.02, float(late.max()) + 0.05)
    if axes.flat[0].get_legend() is not None:
        sns.move_legend(axes.flat[0], "upper right", frameon=False, title=None, fontsize="small")
    return Plot(name, title, caption, figure=fig)


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as float64, NaN where missing or absent."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _pareto_front(points: pd.DataFrame, x: str) -> pd.DataFrame:
    """The points no other point beats on both cost (x) and val_loss, sorted by cost."""
    ordered = points.sort_values([x, "val_loss"])
    front, best = [], math.inf
    for idx, row in ordered.iterrows():
        if row["val_loss"] < best:
            front.append(idx)
            best = row["val_loss"]
    return ordered.loc[front]


def quality_pareto(quality: pd.DataFrame, df: pd.DataFrame) -> Plot:
    """val_loss against training wall time and against training energy, one point per configuration."""
    from harness.quality import group_key
    from harness.report.tables import varying

    name, title = "quality_pareto", "Quality against training time and energy"
    caption = ("Each point is one configuration, mean over its seeds (bars: the range of the seeds): validation loss "
               "against the training time of the whole budget (steps x median step time) and against its energy "
               "(steps x measured energy per step). Lower-left is better; the line joins the configurations no other "
               "beats on both (the Pareto front).")
    if quality.empty:
        return Plot(name, title, caption, missing="no MoE configuration and its baseline both trained")
    extras = varying(quality)
    rows = []
    for key, group in quality.groupby(group_key(quality), sort=False):
        label = config_label(group.iloc[0], extras)
        dense_label = "dense for " + label
        for side, prefix, who in (("MoE", "", label), ("dense baseline", "dense_", dense_label)):
            steps = _numbers(group, "quality_steps")
            tokens = _numbers(group, "quality_tokens") / steps
            seconds = steps * _numbers(group, f"{prefix}latency_ms_median") / 1000
            energy = steps * tokens * _numbers(group, f"{prefix}energy_j_per_token")
            loss = _numbers(group, f"{prefix}val_loss")
            rows.append({"configuration": who, "side": side, "val_loss": loss.mean(), "loss_lo": loss.min(),
                         "loss_hi": loss.max(), "time_s": seconds.mean(), "energy_j": energy.mean()})
    points = pd.DataFrame(rows)
    fig, axes = new_figure(1, 2)
    palette = dict(zip(["dense baseline", "MoE"], sns.color_palette("tab10", 2)))
    for ax, column, label, source in ((axes[0][0], "time_s", "training time (s)", "latency_ms_median"),
                                      (axes[0][1], "energy_j", "training energy (J)", "energy_j_per_token")):
        data = points[np.isfinite(points[column].astype(float)) & np.isfinite(points["val_loss"].astype(float))]
        if data.empty:
            ax.set_axis_off()
            reason = coverage(df[df["workload"] == "quality"], source)[2] or "not measured"
            ax.set_title(f"{label}: not measured", fontsize="small")
            ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax.transAxes, color="0.4",
                    fontsize="small")
            continue
        for side, sub in data.groupby("side"):
            ax.errorbar(sub[column], sub["val_loss"], yerr=[sub["val_loss"] - sub["loss_lo"], sub["loss_hi"] - sub["val_loss"]],
                        fmt="o", color=palette[side], label=side, markersize=5, capsize=2)
        front = _pareto_front(data, column)
        ax.plot(front[column], front["val_loss"], color="0.3", linestyle="--", linewidth=1, label="Pareto front")
        for _, row in data.iterrows():
            if row["side"] == "MoE":
                ax.annotate(row["configuration"], (row[column], row["val_loss"]), fontsize="x-small",
                            xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/byte)")
        ax.legend(frameon=False, fontsize="small")
    return Plot(name, title, caption, figure=fig)
