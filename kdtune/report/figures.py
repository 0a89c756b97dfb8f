"""The report's figures: which ones an experiment gets, and one function per figure.

Each plot function takes tables from `kdtune.report.summary` (the data model is `kdtune.report.experiment`) and
plain values and writes one file.
Accuracies are drawn in %, temperature on a log axis; the no-KD student and the teacher are
horizontal references (the no-KD student with its 95% band over seeds; the teacher is one model).
When the temperature method varies, each method is its own curve (same axes, its own colour); LS is drawn at
its base T and CTKD at the temperature it learned (its final value, mean over seeds), as the labels say.
gain_analysis draws the quantity the report tests: the paired gain over the no-KD student, with its
interval and the minimum detectable gain around zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from kdtune.report.experiment import Experiment, Headline  # noqa: E402
from kdtune.report.stats import ci95, method_order, with_method  # noqa: E402

METHOD_LABEL = {"kd": "KD (fixed T)", "ls": "LS (standardised logits, at its base T)",
                "ctkd": "CTKD (at its learned final T, mean over seeds)", "dkd": "DKD (TCKD + β NCKD)",
                "kd-shuffled": "control: a same-class image's logits", "kd-uniform": "control: labels only"}
T_AXIS = {"kd": "temperature T (log scale)", "ls": "LS's base temperature T (log scale)",
          "ctkd": "CTKD's learned T at the last epoch, mean over seeds (log scale)"}
MIXED_T_AXIS = "temperature T (log scale)\nLS: its base T; CTKD: its learned final T, mean over seeds"


STUDENT, BASELINE, TEACHER, BEST, CONFIRM = "tab:blue", "tab:gray", "black", "tab:red", "tab:purple"
AXIS_LABEL = {"temperature": "temperature T (log scale)", "alpha": "α (weight of the KD term)"}
SYMBOL = {"temperature": "T", "alpha": "α"}
# Learning-curve line style and end marker of each trial outcome.
OUTCOME_STYLE = {"finished": ("-", None), "stopped early": ("--", "X"), "errored": (":", "x"), "diverged": (":", "x"),
                 "in progress": ("-.", ">"), "running": ("-.", ">"), "paused": ("-.", ">"), "pending": ("-.", ">")}
DPI = 150
RC = {"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8.5}  # readable at README width


@dataclass(frozen=True)
class Space:
    """What the figures need to know of the search: which parameters varied, and how."""

    varied: list[str]
    grid: bool  # grid points (lines and bands) or sampled points (markers and error bars)
    seeds: int
    bounds: dict  # Optuna: parameter -> (low, high) of its distribution
    asha: bool

    @classmethod
    def of(cls, exp: Experiment) -> "Space":
        s = exp.settings
        bounds = {k: (float(spec[1]), float(spec[2])) for k, spec in s["space"]["distributions"].items()
                  if spec[0] != "categorical"}
        return cls(exp.varied, s["search"] == "grid", int(s["seeds"]), bounds, bool(s["asha"]))

    @property
    def by_method(self) -> bool:
        return "method" in self.varied

    def set_axis(self, ax, param: str, values, axis: str = "x") -> None:
        """Log scale for T; ticks at the grid's values, or over an Optuna distribution's whole range."""
        log = param == "temperature"
        if axis == "x" and log:
            ax.set_xscale("log")
        if axis == "x" and param in self.bounds:
            low, high = self.bounds[param]
            ax.set_xlim(*((low / (high / low) ** 0.04, high * (high / low) ** 0.04) if log else
                          (low - 0.04 * (high - low), high + 0.04 * (high - low))))
        if not log:
            return
        which = ax.xaxis if axis == "x" else ax.yaxis
        values = np.unique(np.asarray(values, dtype=float))
        if param in self.bounds or len(values) > 10:
            low, high = self.bounds.get(param, (values.min(), values.max()))
            values = [m * 10.0 ** e for e in range(-2, 4) for m in (1, 2, 5) if low <= m * 10.0 ** e <= high]
        which.set_major_locator(FixedLocator(values))
        which.set_minor_locator(NullLocator())
        which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def draw_all(exp: Experiment, configs: pd.DataFrame, h: Headline, out: Path, fmt: str):
    """Draw the figures this experiment's search calls for; return ([files written], ['name: why not drawn'])."""
    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(RC):
        return _draw_all(exp, configs, h, out, fmt)


def _draw_all(exp: Experiment, configs: pd.DataFrame, h: Headline, out: Path, fmt: str):
    sweep = configs[(configs["phase"] == "sweep") & (configs["seeds_finished"] > 0)]
    space = Space.of(exp)
    varied, grid = space.varied, space.grid
    figures, skipped = [], []

    def draw(name: str, why_not: str | None, plot) -> None:
        if why_not:
            skipped.append(f"{name}.{fmt}: {why_not}")
        else:
            figures.append(plot(out / f"{name}.{fmt}"))

    no_finished = None if len(sweep) else "no distilled configuration has a finished seed yet"
    for param, name in (("temperature", "temperature_analysis"), ("alpha", "alpha_analysis")):
        if param in varied:
            rows, note = analysis_rows(sweep, param, varied, h.best, grid)
            draw(name, no_finished, lambda path, rows=rows, param=param, note=note: plot_parameter_analysis(
                rows, param, h, space, note, path))
    if grid and {"temperature", "alpha"} <= set(varied):
        draw("heatmap", no_finished, lambda path: plot_heatmap(sweep, h.best, path))
    if not grid:
        tried = exp.trials[(exp.trials["phase"] == "sweep") & (exp.trials["epochs_run"] > 0)]
        draw("optuna_trials", None if len(tried) else "no Optuna trial has finished an epoch yet",
             lambda path: plot_optuna(tried, h, space, path))
    gains = sweep[sweep["gain_mean"].notna()]
    if h.baseline is not None:
        draw("gain_analysis", None if len(gains) else "no distilled seed has a finished no-KD seed to pair with yet",
             lambda path: plot_gain_analysis(gains, h, space, path))
    # Per-epoch results live only in Tune's trial folders.
    no_epochs = f"no per-epoch results (rebuilt from {exp.rebuilt_from.name})" if exp.rebuilt_from else None
    draw("learning_curves", _stale(no_epochs, out, f"learning_curves.{fmt}"),
         lambda path: plot_learning_curves(exp, space, path))
    trials = with_method(exp.trials)
    ctkd = trials[(trials["method"] == "ctkd") & (trials["alpha"] > 0)]
    if len(ctkd):
        learned = exp.epochs[exp.epochs["trial_id"].isin(ctkd["trial_id"])].dropna(subset=["learned_temperature"])
        why = no_epochs or (None if len(learned) else "no CTKD trial has reported an epoch yet")
        draw("learned_temperature", _stale(why, out, f"learned_temperature.{fmt}"),
             lambda path: plot_learned_temperature(exp, ctkd, learned, path))
    x = "temperature" if "temperature" in varied else "alpha"
    draw("fidelity_calibration", no_finished, lambda path: plot_fidelity_calibration(sweep, x, h, space, path))
    measured = sweep[sweep["test_agreement_mean"].notna()]
    draw("fidelity", no_finished or (None if len(measured) else "no student was measured against the teacher on the "
                                     "test set (an experiment of kdtune 0.2 or older)"),
         lambda path: plot_fidelity(measured, x, h, space, path))
    return figures, skipped


def _stale(why: str | None, out: Path, name: str) -> str | None:
    """Why a figure is not drawn, saying so when a file of its name from an earlier report is left in `out`."""
    if why and (out / name).exists():
        return f"{why}; the {name} in this folder is an earlier report's, left in place"
    return why


def analysis_rows(sweep: pd.DataFrame, param: str, varied: list[str], best: dict | None, grid: bool):
    """The configurations to draw against `param`: on a joint grid, those at the best value of the other parameter."""
    other = "alpha" if param == "temperature" else "temperature"
    if grid and other in varied and best is not None:
        return sweep[sweep[other] == best[other]].sort_values(param), f"{SYMBOL[other]} = {best[other]:g}, the best"
    if other in varied:
        return sweep.sort_values(param), "each point one sampled (T, α)"
    fixed = sweep[other].iloc[0] if len(sweep) else math.nan
    return sweep.sort_values(param), f"{SYMBOL[other]} = {fixed:g}"


# ----------------------------------------------------------------------------- helpers


def _save(fig, path: Path, legend_from=None) -> Path:
    """Write the figure; with `legend_from` (axes, or a list of them), their legend goes in a row below the panels."""
    if legend_from is not None:
        entries = {}
        for ax in legend_from if isinstance(legend_from, (list, tuple, np.ndarray)) else [legend_from]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        handles, labels = list(entries.values()), list(entries)
        long = sum(map(len, labels)) > 150  # four long entries in a row would run past the figure's edges
        fig.legend(handles, labels, loc="lower center", ncol=min(3 if long else 4, len(labels)), frameon=False)
        fig.tight_layout(rect=(0, 0.09, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _reference(ax, mean: float, half: float, color: str, label: str, style: str) -> None:
    """A horizontal line at `mean` with a band of ± half (when known)."""
    if mean is None or not math.isfinite(mean):
        return
    ax.axhline(100 * mean, color=color, linestyle=style, linewidth=1.3, label=label)
    if half is not None and math.isfinite(half):
        low, high = np.clip([100 * (mean - half), 100 * (mean + half)], 0, 100)  # a CI past 0 or 100% is not shown
        ax.axhspan(low, high, color=color, alpha=0.15, linewidth=0)


def _student(ax, x, mean, half, label: str, connect: bool, color: str = STUDENT, seeds=(), planned: int = 0) -> None:
    """Mean over seeds with its 95% CI: a line on a grid (a band when every point has a CI, else error bars),
    markers with error bars on sampled points; 'n=1' beside points with fewer finished seeds than planned."""
    x, mean, half = (np.asarray(v, dtype=float) for v in (x, mean, half))
    have = np.isfinite(half)
    low, high = np.clip(100 * (mean - half), 0, 100), np.clip(100 * (mean + half), 0, 100)  # no CI past 0 or 100%
    if connect:
        ax.plot(x, 100 * mean, marker="o", color=color, label=label)
    if connect and have.all() and len(x) > 1:
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    elif have.any() or not connect:
        error = np.where(have, [100 * mean - low, high - 100 * mean], 0)
        ax.errorbar(x, 100 * mean, yerr=error, fmt="none" if connect else "o", color=color, capsize=4,
                    label=None if connect else label)
    for xi, yi, n in zip(x, mean, seeds):
        if n < planned:
            ax.annotate(f"n={n}", (xi, 100 * yi), xytext=(5, 5), textcoords="offset points", fontsize=8, color=color)
    ax.margins(x=0.06, y=0.12)  # room for the labels at the edges


def _ci(rows: pd.DataFrame, name: str) -> np.ndarray:
    if f"{name}_ci95" in rows:
        return rows[f"{name}_ci95"].to_numpy(dtype=float)
    return np.array([ci95(s, n) for s, n in zip(rows[f"{name}_std"], rows["seeds_finished"])], dtype=float)


def _seeds_label(seeds: int, finished: int | None = None) -> str:
    if seeds == 1:
        return "1 seed, no band"
    if finished is None:
        return f"mean of up to {seeds} seeds, 95% CI"
    return f"mean of {finished} seed{'s' * (finished != 1)}" + (", 95% CI" if finished > 1 else ", no band")


# ----------------------------------------------------------------------------- figures


def plot_parameter_analysis(rows: pd.DataFrame, param: str, h: Headline, space: Space, note: str, path: Path) -> Path:
    """Student accuracy against T (or α), validation and test; the no-KD student, the teacher, the best value."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split, title in zip(axes, ("val_acc", "test_acc"), ("Validation", "Test")):
        _reference(ax, h.teacher[split], None, TEACHER, "teacher (one model)", "--")
        base = h.baseline
        if base is not None:
            _reference(ax, base[f"{split}_mean"], base[f"{split}_ci95"], BASELINE,
                       f"no KD ({_seeds_label(space.seeds, base['seeds_finished'])})", "-")
        for k, (method, part) in enumerate(_curves(rows, space)):
            part = _at_x(part, param, method).sort_values("x")
            label = METHOD_LABEL.get(method, method) if space.by_method else f"KD student ({_seeds_label(space.seeds)})"
            learned = param == "temperature" and method == "ctkd"  # points of different T₀: not a curve
            _student(ax, part["x"], part[f"{split}_mean"], _ci(part, split), label,
                     space.grid and not learned, color=f"C{k}" if space.by_method else STUDENT,
                     seeds=part["seeds_finished"], planned=space.seeds)
        best = h.best
        drawn = best is not None and best[param] in set(rows[param])
        if drawn:
            x = _x(best, param)
            ax.plot(x, 100 * best[f"{split}_mean"], marker="*", markersize=16, color=BEST, linestyle="none",
                    label=f"chosen {SYMBOL[param]}, search: {_optimistic(h)}", zorder=5)
        confirm = h.confirm
        if split == "test_acc" and confirm is not None and math.isfinite(confirm["test_acc_mean"]):
            ax.errorbar(_x(confirm, param), 100 * confirm["test_acc_mean"], yerr=100 * _finite(confirm["test_acc_ci95"]),
                        fmt="D", color=CONFIRM, capsize=4, zorder=5,
                        label=f"{SYMBOL[param]} = {confirm[param]:g} re-measured on {int(confirm['seeds_finished'])} "
                              f"fresh seeds (test, 95% CI)")
        space.set_axis(ax, param, rows[param])
        if drawn and split == "test_acc":
            test = _pm(best["test_acc_mean"], best["test_acc_std"])
            method = f"{best['method'].upper()}, " if space.by_method else ""
            label = (f"chosen {method}{SYMBOL[param]} = {best[param]:.3g}, search\n{_optimistic(h)}\ntest {test}%\n"
                     f"{_gain_label(best)}")
            _annotate(ax, _x(best, param), 100 * best["test_acc_mean"], label)
        mixed = param == "temperature" and space.by_method and bool(set(rows["method"]) - {"kd"})
        ax.set(xlabel=MIXED_T_AXIS if mixed else AXIS_LABEL[param], title=f"{title} accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    per_method = f"; each method {_seeds_label(space.seeds)}" if space.by_method else ""
    fig.suptitle(f"Student accuracy against {SYMBOL[param]} — {note}; finished seeds only{per_method}")
    return _save(fig, path, legend_from=list(axes))


def _curves(rows: pd.DataFrame, space: Space) -> list[tuple[str | None, pd.DataFrame]]:
    """One curve per method when the method varies (in kdtune.engine.losses.METHODS order), else one."""
    if not space.by_method:
        return [(None, rows)]
    return [(m, rows[rows["method"] == m]) for m in method_order(rows["method"])]


def _annotate(ax, x: float, y: float, text: str) -> None:
    """Text beside the point (x, y), placed towards the middle of the axes so that it stays inside them."""
    x_low, x_high = ax.get_xlim()
    y_low, y_high = ax.get_ylim()
    scale = np.log if ax.get_xscale() == "log" else (lambda v: v)
    right = (scale(x) - scale(x_low)) / (scale(x_high) - scale(x_low)) > 0.6
    upper = (y - y_low) / (y_high - y_low) > 0.5
    ax.annotate(text, (x, y), xytext=(-14 if right else 14, -14 if upper else 14), textcoords="offset points",
                ha="right" if right else "left", va="top" if upper else "bottom", color=BEST, fontsize=9.5,
                fontweight="bold", bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": BEST, "alpha": 0.9})


def _gain_label(row: dict) -> str:
    """A row's paired gain over the no-KD student of the same phase's seeds, as the figure states it."""
    if not math.isfinite(row["gain_mean"]):
        return "gain vs no KD: not known yet"
    text = f"gain vs no KD {100 * row['gain_mean']:+.2f}"
    if math.isfinite(row["gain_ci95"]):
        low, high = 100 * (row["gain_mean"] - row["gain_ci95"]), 100 * (row["gain_mean"] + row["gain_ci95"])
        text += f" [{low:+.2f}, {high:+.2f}]"
    return f"{text} points\n(paired, 95% CI)"


def _optimistic(h: Headline) -> str:
    return f"optimistic (selected among {h.competed})"


def _x(row: dict, param: str) -> float:
    """Where a configuration is drawn against `param`: CTKD at the temperature it learned, others at their own."""
    if param == "temperature" and row.get("method") == "ctkd":
        return float(row["learned_temperature_mean"])
    return float(row[param])


def _at_x(rows: pd.DataFrame, param: str, method: str | None) -> pd.DataFrame:
    """`rows` with their x (see `_x`); a CTKD row without a learned temperature is left out."""
    x = rows["learned_temperature_mean"] if param == "temperature" and method == "ctkd" else rows[param]
    return rows.assign(x=x.to_numpy(dtype=float)).dropna(subset=["x"])


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if math.isfinite(std) else "")


def plot_gain_analysis(sweep: pd.DataFrame, h: Headline, space: Space, path: Path) -> Path:
    """The tested quantity: paired gain over the no-KD student against T (or α), 95% interval as error bars,
    ± the minimum detectable gain (80% power) shaded around zero; one panel per method when it varies."""
    param = "alpha" if "alpha" in space.varied and "temperature" not in space.varied else "temperature"
    other = "alpha" if param == "temperature" else "temperature"
    panels = _curves(sweep, space)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(9.0, 5.5 * len(panels) + 1), 4.6), sharey=True, squeeze=False)
    for ax, (method, rows) in zip(axes[0], panels):
        series = rows.groupby(other) if space.grid and other in space.varied else [(None, rows)]
        for k, (value, part) in enumerate(series):
            part = _at_x(part, param, method).sort_values("x")
            color = f"C{k}" if value is not None else STUDENT
            mde = 100 * part["mde"].to_numpy(dtype=float)
            band = {"color": color, "alpha": 0.15, "linewidth": 0,
                    "label": "± minimum detectable gain (80% power)" if k == 0 else None}
            if len(part) == 1 and np.isfinite(mde).all():  # one point: a band across the panel
                ax.axhspan(-mde[0], mde[0], **band)
            elif np.isfinite(mde).any():
                ax.fill_between(part["x"], -mde, mde, **band)
            name = f"{SYMBOL[other]} = {value:g}" if value is not None else "search"
            learned = param == "temperature" and method == "ctkd"  # points of different T₀: not a curve
            ax.errorbar(part["x"], 100 * part["gain_mean"], yerr=100 * part["gain_ci95"].fillna(0).to_numpy(),
                        fmt="o-" if space.grid and not learned else "o", color=color, capsize=4,
                        label=f"{name} ({_seeds_label(space.seeds)}, paired)")
            if learned:
                for row in part.to_dict("records"):
                    ax.annotate(f"T₀ = {row['temperature']:g}", (row["x"], 100 * row["gain_mean"]), xytext=(6, 6),
                                textcoords="offset points", fontsize=8, color=color)
        ax.axhline(0, color=TEACHER, linewidth=1, label="no KD (gain 0)")
        for row, marker, label in ((h.best, "*", f"chosen, search: {_optimistic(h)}"),
                                   (h.confirm, "D", "re-measured on fresh seeds (95% CI)")):
            if row is None or not math.isfinite(row["gain_mean"]) or (method is not None and row["method"] != method):
                continue
            x = _x(row, param)
            if not math.isfinite(x):
                continue
            is_confirm = marker == "D"
            ax.errorbar(x, 100 * row["gain_mean"], yerr=100 * _finite(row["gain_ci95"]) if is_confirm else None,
                        fmt=marker, markersize=9 if is_confirm else 16, color=CONFIRM if is_confirm else BEST,
                        capsize=4, zorder=5, label=label)
        if param == "temperature" and method == "ctkd":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            space.set_axis(ax, param, rows[param])
        ax.set(xlabel=T_AXIS.get(method or "kd") if param == "temperature" else AXIS_LABEL[param],
               title=METHOD_LABEL.get(method, method) if method else "Paired gain over the no-KD student")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy gain over no KD (points)")
    fig.suptitle("Test accuracy gain over the no-KD student of the same seeds (paired), 95% CI")
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    columns = min(2 if len(panels) == 1 else 3, len(handles))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=columns, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * math.ceil(len(handles) / columns) + 0.02, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_heatmap(sweep: pd.DataFrame, best: dict | None, path: Path) -> Path:
    """Mean validation accuracy over the T x α grid, each cell annotated; cells without a finished seed left grey."""
    mean = sweep.pivot_table(index="alpha", columns="temperature", values="val_acc_mean", dropna=False)
    std = sweep.pivot_table(index="alpha", columns="temperature", values="val_acc_std", dropna=False)
    std = std.reindex(index=mean.index, columns=mean.columns)
    fig, ax = plt.subplots(figsize=(1.3 * len(mean.columns) + 3, 0.8 * len(mean.index) + 2))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgray")
    image = ax.imshow(100 * mean.to_numpy(dtype=float), cmap=cmap, aspect="auto", origin="lower")
    for (i, alpha), (j, temperature) in ((a, t) for a in enumerate(mean.index) for t in enumerate(mean.columns)):
        value, spread = mean.iloc[i, j], std.iloc[i, j]
        if not math.isfinite(value):
            ax.text(j, i, "—", ha="center", va="center")
            continue
        dark = image.norm(100 * value) < 0.6
        text = f"{100 * value:.1f}" + (f"\n±{100 * spread:.1f}" if math.isfinite(spread) else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        if best is not None and best["temperature"] == temperature and best["alpha"] == alpha:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=BEST, linewidth=2.5))
    ax.set_xticks(range(len(mean.columns)), [f"{t:g}" for t in mean.columns])
    ax.set_yticks(range(len(mean.index)), [f"{a:g}" for a in mean.index])
    ax.set(xlabel="temperature T", ylabel="α (weight of the KD term)",
           title="Mean validation accuracy (%) ± std over seeds" + ("; best outlined" if best else ""))
    fig.colorbar(image, ax=ax, label="validation accuracy (%)")
    return _save(fig, path)


def plot_optuna(tried: pd.DataFrame, h: Headline, space: Space, path: Path) -> Path:
    """Left: trials in the (T, α) plane coloured by accuracy, pruned ones marked; right: accuracy by trial number."""
    fig, (ax_plane, ax_order) = plt.subplots(1, 2, figsize=(11, 4.4))
    acc = 100 * tried["final_val_acc"].to_numpy(dtype=float)
    norm = Normalize(np.nanmin(acc), np.nanmax(acc) if np.nanmax(acc) > np.nanmin(acc) else np.nanmin(acc) + 1)
    x_param = "temperature" if "temperature" in space.varied else "alpha"
    y_param = "alpha" if {"temperature", "alpha"} <= set(space.varied) else None
    markers = {"finished": ("o", "finished"), "stopped early": ("v", "pruned (stopped early)")}
    scatter = None
    for outcome, group in tried.groupby("outcome"):
        marker, label = markers.get(outcome, ("s", outcome))
        y = group[y_param] if y_param else 100 * group["final_val_acc"]
        scatter = ax_plane.scatter(group[x_param], y, c=100 * group["final_val_acc"], cmap="viridis", norm=norm,
                                   marker=marker, s=60, edgecolors="black", linewidths=0.6, label=label)
        ax_order.scatter(group["trial_number"], 100 * group["final_val_acc"], marker=marker, s=40,
                         color=STUDENT if outcome == "finished" else BASELINE, label=label, zorder=3)
    space.set_axis(ax_plane, x_param, tried[x_param])
    if y_param:
        ax_plane.set_ylim(*space.bounds[y_param])
    ax_plane.set(xlabel=AXIS_LABEL[x_param], ylabel=AXIS_LABEL[y_param] if y_param else "validation accuracy (%)",
                 title="Trials, coloured by validation accuracy")
    fig.colorbar(scatter, ax=ax_plane, label="validation accuracy at last epoch (%)")
    finished = tried[tried["outcome"] == "finished"].sort_values("trial_number")
    if len(finished):
        last = tried["trial_number"].max()
        best = 100 * finished["final_val_acc"].cummax()
        ax_order.step([*finished["trial_number"], last], [*best, best.iloc[-1]], where="post", color=BEST,
                      label="best finished so far")
    if h.baseline is not None:
        _reference(ax_order, h.baseline["val_acc_mean"], h.baseline["val_acc_ci95"], BASELINE, "no KD", "-")
    ax_order.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_order.set(xlabel="trial number (order started)", ylabel="validation accuracy at last epoch (%)",
                 title="Accuracy against trial number")
    for ax in (ax_plane, ax_order):
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    return _save(fig, path)


def plot_learning_curves(exp: Experiment, space: Space, path: Path) -> Path:
    """Validation accuracy per epoch of every trial, coloured by T (or α); stopped and failed trials drawn apart."""
    param = "temperature" if "temperature" in space.varied else "alpha"
    trials = exp.trials.set_index("trial_id")
    sweep_values = trials.loc[trials["phase"] == "sweep", param].dropna()
    positive = param == "temperature" and len(sweep_values) and sweep_values.min() > 0
    low, high = (sweep_values.min(), sweep_values.max()) if len(sweep_values) else (1.0, 2.0)
    low, high = space.bounds.get(param, (low, high))  # Optuna: the whole range searched
    high = high if high > low else low * 1.5 + 1e-9
    norm = LogNorm(low, high) if positive else Normalize(low, high)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8, 4.6))
    seen = set()
    for trial_id, curve in exp.epochs.groupby("trial_id", sort=False):
        trial = trials.loc[trial_id]
        style, end = OUTCOME_STYLE.get(trial["outcome"], (":", "s"))
        color = "black" if trial["phase"] == "baseline" else cmap(norm(trial[param]))
        ax.plot(curve["epoch"], 100 * curve["val_acc"], linestyle=style, color=color, linewidth=1.4, alpha=0.85)
        if end:
            failed = trial["outcome"] in ("errored", "diverged")
            ax.plot(curve["epoch"].iloc[-1], 100 * curve["val_acc"].iloc[-1], marker=end, linestyle="none",
                    markersize=10 if failed else 8, markeredgewidth=2 if failed else 1,
                    color=BEST if failed else color, zorder=4 if failed else 3)
        seen.add("no KD" if trial["phase"] == "baseline" else trial["outcome"])
    handles = [Line2D([], [], color="black", label="no KD (α = 0)")] if "no KD" in seen else []
    for outcome, (style, end) in OUTCOME_STYLE.items():
        if outcome in seen:
            label = "stopped early (ASHA)" if outcome == "stopped early" and space.asha else outcome
            handles.append(Line2D([], [], color="gray", linestyle=style, marker=end, label=label))
    ax.legend(handles=handles, loc="lower right")
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                       label=AXIS_LABEL[param].replace(" (log scale)", " (log colour scale)"))
    if positive:
        space.set_axis(bar.ax, param, sweep_values, axis="y")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    reported = exp.epochs["trial_id"].nunique()
    title = f"Learning curves of all {len(trials)} trials" if reported == len(trials) else \
        f"Learning curves ({reported} of {len(trials)} trials have reported an epoch)"
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_fidelity_calibration(sweep: pd.DataFrame, x: str, h: Headline, space: Space, path: Path) -> Path:
    """Top-1 agreement with the teacher and validation ECE against T (one line per α on a joint grid)."""
    other = "alpha" if x == "temperature" else "temperature"
    if space.by_method:
        groups = [(METHOD_LABEL.get(m, m), rows) for m, rows in _curves(sweep, space)]
    elif space.grid and other in space.varied:
        groups = [(f"{SYMBOL[other]} = {value:g}", rows) for value, rows in sweep.groupby(other)]
    else:
        groups = [(None, sweep)]
    fig, (ax_agree, ax_ece) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (name, rows) in enumerate(groups):
        rows = rows.sort_values(x)
        color = f"C{k}" if name is not None else STUDENT
        label = name if name is not None else "KD student"
        for ax, name in ((ax_agree, "agreement"), (ax_ece, "val_ece")):
            _student(ax, rows[x], rows[f"{name}_mean"], _ci(rows, name), label, space.grid, color=color,
                     seeds=rows["seeds_finished"], planned=space.seeds)
    if h.baseline is not None:
        b = h.baseline
        _reference(ax_ece, b["val_ece_mean"], ci95(b["val_ece_std"], b["seeds_finished"]), BASELINE, "no KD", "-")
    ax_agree.set(ylabel="top-1 agreement with the teacher (%)", title="Fidelity to the teacher (validation)")
    ax_ece.set(ylabel="expected calibration error (%)", title="Calibration (validation ECE, lower is better)")
    for ax in (ax_agree, ax_ece):
        space.set_axis(ax, x, sweep[x])
        ax.set_xlabel(AXIS_LABEL[x])
        ax.grid(alpha=0.3)
    fig.suptitle("Mean over finished seeds, 95% CI where there are 2 or more")
    return _save(fig, path, legend_from=ax_ece)


FIDELITY = (("test_agreement", "top-1 agreement with the teacher (%)", "Agreement (test)"),
            ("test_kl", "mean KL(teacher || student) at T = 1 (nats)", "Divergence from the teacher (test)"),
            ("inherited_errors", "same wrong class as the teacher (%)", "Inherited errors (test)"))


def plot_fidelity(sweep: pd.DataFrame, x: str, h: Headline, space: Space, path: Path) -> Path:
    """What the student took from the teacher, on the test set: agreement, KL at T = 1 and inherited errors (of
    the images the teacher gets wrong, the share where the student gives the same wrong class) against T, the
    no-KD student as the reference; and the accuracy gain against agreement across configurations."""
    groups = [(METHOD_LABEL.get(m, m), rows) for m, rows in _curves(sweep, space)] if space.by_method else [
        (None, sweep)]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    for k, (name, rows) in enumerate(groups):
        rows = _at_x(rows.sort_values(x), x, rows["method"].iloc[0] if space.by_method else None)
        color = f"C{k}" if name is not None else STUDENT
        label = name if name is not None else "KD student"
        for ax, (stat, _, _) in zip(axes, FIDELITY):
            scale = 1.0 if stat == "test_kl" else 100.0
            half = np.array([ci95(sd, n) for sd, n in zip(rows[f"{stat}_std"], rows["seeds_finished"])], dtype=float)
            _series(ax, rows["x"], rows[f"{stat}_mean"] * scale, half * scale, label, space.grid, color)
        gains = rows[rows["gain_mean"].notna()]
        axes[3].errorbar(100 * gains["test_agreement_mean"], 100 * gains["gain_mean"],
                         yerr=100 * gains["gain_ci95"].fillna(0), fmt="o", color=color, capsize=3, label=label)
    if h.baseline is not None:
        b = h.baseline
        for ax, (stat, _, _) in zip(axes, FIDELITY):
            scale = 1.0 if stat == "test_kl" else 100.0
            mean, half = b.get(f"{stat}_mean", math.nan), ci95(b.get(f"{stat}_std", math.nan), b["seeds_finished"])
            if math.isfinite(mean):
                ax.axhline(scale * mean, color=BASELINE, linewidth=1.3, label="no KD (measured against the teacher)")
                if math.isfinite(half):
                    ax.axhspan(scale * (mean - half), scale * (mean + half), color=BASELINE, alpha=0.15, linewidth=0)
    for ax, (_, ylabel, title) in zip(axes, FIDELITY):
        space.set_axis(ax, x, sweep[x])
        ax.set(xlabel=AXIS_LABEL[x], ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
    axes[3].axhline(0, color=BASELINE, linewidth=1)
    axes[3].set(xlabel="top-1 agreement with the teacher, test (%)", ylabel="gain over no KD (points, 95% CI)",
                title="Accuracy gain against agreement")
    axes[3].grid(alpha=0.3)
    fig.suptitle("Fidelity to the teacher on the test set: mean over finished seeds, 95% CI where there are 2 or more")
    return _save(fig, path, legend_from=axes[0])


def _series(ax, x, mean, half, label: str, connect: bool, color: str) -> None:
    """A statistic in its own units (not %) against x: a line with a band on a grid, else markers with bars."""
    x, mean, half = (np.asarray(v, dtype=float) for v in (x, mean, half))
    if connect:
        ax.plot(x, mean, marker="o", color=color, label=label)
        if np.isfinite(half).all() and len(x) > 1:
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, linewidth=0)
    else:
        ax.errorbar(x, mean, yerr=np.where(np.isfinite(half), half, 0), fmt="o", color=color, capsize=4, label=label)


def plot_learned_temperature(exp: Experiment, ctkd: pd.DataFrame, epochs: pd.DataFrame, path: Path) -> Path:
    """CTKD's learned temperature against epoch, one line per trial (seed), coloured by its initial T."""
    starts = sorted(ctkd["temperature"].unique())
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for trial in ctkd.to_dict("records"):
        curve = epochs[epochs["trial_id"] == trial["trial_id"]].sort_values("epoch")
        if curve.empty:
            continue
        color = f"C{starts.index(trial['temperature']) % 10}"
        style = "-" if trial["phase"] == "sweep" else "--"
        # Epoch 0: the initial value, so that the line shows where T started.
        ax.plot([0, *curve["epoch"]], [trial["temperature"], *curve["learned_temperature"]], color=color,
                linestyle=style, marker="o", markersize=3, linewidth=1.3, alpha=0.85)
    low, high = exp.settings.get("ctkd_range", (1.0, 21.0))
    for bound in (low, high):
        ax.axhline(bound, color="gray", linestyle=":", linewidth=1)
    handles = [Line2D([], [], color=f"C{i % 10}", label=f"T₀ = {t:g}") for i, t in enumerate(starts)]
    handles.append(Line2D([], [], color="gray", linestyle=":", label=f"bounds [{low:g}, {high:g}]"))
    if (ctkd["phase"] == "confirm").any():
        handles.append(Line2D([], [], color="gray", linestyle="--", label="confirmation (fresh seeds)"))
    ax.legend(handles=handles, loc="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="learned temperature T", yscale="log",
           title=f"CTKD: the temperature each of {len(ctkd)} trials learned (one line per seed)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(alpha=0.3)
    return _save(fig, path)
