"""Scaling plots (matplotlib, Agg): observed points by run status, the fitted law with its band.

Every figure is written as PNG and SVG next to each other (``out_stem`` + suffix). What a reader
must be able to trust from the picture alone:

* log-log axes for scaling axes and FID-like metrics;
* one colour per recipe; done runs filled, failed/diverged/pending runs drawn with their own
  markers (at the bottom edge when they have no value) and counted in the legend;
* the law is fitted by ``analysis.fit`` (same code as the report), drawn with its 95% bootstrap
  band, dashed beyond the data; the held-out-largest-x error is in the legend;
* only one metric protocol per figure: rows made under other protocols are left out and counted
  in the caption next to the protocol hash;
* released tokenizers (anchor rows) are black stars labelled with their name, never fitted; one whose x is
  unknown (a released model's pre-training FLOPs) is a labelled dotted horizontal line at its value;
* log axes carry plain tick labels, never mathtext like ``2×10²`` (``_plain_log_ticks``, applied to
  every log axis of every figure in ``_save``): ``100``, ``150``, ``200`` on a gFID axis, ``1e19``,
  ``2e19`` on a FLOPs axis (``tick_label``). ``Figure.tick_labels`` records the labels that were drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker as mticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from analysis.fit import FitResult  # noqa: E402
from analysis.table import LOG_METRICS, PROTOCOL_OF, SCALING_AXES, done_points, fit_column, protocol_rows  # noqa: E402

STATUS_MARKERS = {  # status → (marker, filled, label)
    "done": ("o", True, "done"),
    "failed": ("X", True, "failed"),
    "diverged": ("D", False, "diverged"),
    "missing": ("v", False, "pending / running / no value"),
}
LABELS = {"tokenizer_flops": "tokenizer pre-training FLOPs", "budget_flops": "nominal budget FLOPs",
          "encoder_params": "encoder parameters", "data_size": "pre-training images",
          "gfid": "gFID", "rfid": "rFID", "linear_probe": "linear probe (bottleneck)",
          "linear_probe_pre": "linear probe (pre-bottleneck)", "zero_shot": "zero-shot accuracy",
          "dit_flops": "DiT training FLOPs", "sfid": "sFID", "inception_score": "Inception Score",
          "precision": "precision", "recall": "recall", "fd_dinov2": "FD-DINOv2"}


@dataclass
class Figure:
    paths: list[Path]
    fits: dict[str, FitResult] = field(default_factory=dict)
    protocols: dict[str, str | None] = field(default_factory=dict)
    n_excluded: int = 0
    caption: str = ""
    tick_labels: dict[str, list[str]] = field(default_factory=dict)   # "x"/"y" → labels drawn (log axes)


def _status_key(s: str, has_value: bool) -> str:
    if s == "done":
        return "done" if has_value else "missing"
    return s if s in ("failed", "diverged") else "missing"


def _colors(groups) -> dict[str, str]:
    cyc = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {g: cyc[i % len(cyc)] for i, g in enumerate(groups)}


def tick_label(v: float) -> str:
    """Plain text for one log-axis tick (one rule for every log axis of every figure).

    Values in [1e-3, 1e5) (gFID, rFID, probe accuracies…) print as plain decimals: ``120``, ``0.5``.
    Larger or smaller values (FLOPs, parameters, images) print as ``<mantissa>e<exponent>``:
    ``1e19``, ``2e19``, ``2.5e19``. Twenty-digit decimals are unreadable and mathtext (``2×10¹⁹``) is
    what we avoid; this is ``%g`` without its ``+``/zero-padding (``1e+19`` → ``1e19``), the way
    budgets are written in the sweep YAMLs.
    """
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    a = abs(v)
    if 1e-3 <= a < 1e5:
        return f"{v:.6g}"
    e = math.floor(math.log10(a))
    m = round(v / 10.0 ** e, 3)
    if abs(m) >= 10:                      # 9.9996e19 rounds to 10e19: carry into the exponent
        m, e = m / 10, e + 1
    return f"{m:g}e{e}"


class _LogTicks(mticker.Locator):
    """Major ticks for a log axis, chosen from the view span so that several get a label.

    * ≤ 0.6 decades (e.g. gFID 100–250): evenly spaced "nice" values (100, 125, 150, …); on so short
      a span they are nearly evenly spaced on the log scale too, and decade ticks would leave at
      most one label.
    * ≤ 1.3 decades: 1, 2, 3, 5 × 10^k;  ≤ 2.3 decades: 1, 2, 5 × 10^k;  wider: decades only
      (``LogLocator`` thins those further when there are many).
    Minor ticks stay the usual unlabelled 2…9 × 10^k marks.
    """

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not (vmin > 0 and math.isfinite(vmax)):
            return mticker.LogLocator(base=10.0).tick_values(max(vmin, 1e-300), vmax)
        span = math.log10(vmax / vmin)
        if span <= 0.6:
            t = mticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
            return t[t > 0]
        subs = (1.0, 2.0, 3.0, 5.0) if span <= 1.3 else (1.0, 2.0, 5.0) if span <= 2.3 else (1.0,)
        return mticker.LogLocator(base=10.0, subs=subs, numticks=12).tick_values(vmin, vmax)


def _plain_log_ticks(ax) -> None:
    """Every log axis of ``ax``: plain major labels (``tick_label``), unlabelled minor ticks."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale != "log":
            continue
        axis.set_major_locator(_LogTicks())
        axis.set_major_formatter(mticker.FuncFormatter(lambda v, pos=None: tick_label(v)))
        axis.set_minor_locator(mticker.LogLocator(base=10.0, subs="auto", numticks=12))
        axis.set_minor_formatter(mticker.NullFormatter())


def _drawn_labels(axis) -> list[str]:
    """Non-empty labels of the ticks inside the view (major then minor), as the last draw made them."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, fmt in ((axis.get_majorticklocs(), axis.get_major_formatter()),
                      (axis.get_minorticklocs(), axis.get_minor_formatter())):
        inside = [v for v in locs if lo <= v <= hi]
        fmt.set_locs(inside)
        out += [t for t in (fmt(v, i) for i, v in enumerate(inside)) if t]
    return out


def _save(fig, out_stem) -> tuple[list[Path], dict[str, list[str]]]:
    """Write PNG + SVG; returns the paths and the tick labels drawn on log axes ({"x"|"y": labels})."""
    labels: dict[str, list[str]] = {}
    for ax in fig.axes:
        _plain_log_ticks(ax)
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    for ax in fig.axes:
        for name, axis, scale in (("x", ax.xaxis, ax.get_xscale()), ("y", ax.yaxis, ax.get_yscale())):
            if scale == "log":
                labels.setdefault(name, []).extend(_drawn_labels(axis))
    plt.close(fig)
    return paths, labels


def _caption(protos: dict, n_excl: int, extra: str = "") -> str:
    bits = [f"{m} protocol {p or 'unrecorded'}" for m, p in protos.items()]
    if n_excl:
        bits.append(f"{n_excl} row(s) under other protocols left out")
    if extra:
        bits.append(extra)
    return " · ".join(bits)


def _draw_points(ax, sub: pd.DataFrame, x: str, y: str, color: str, counts: dict) -> None:
    """Observed rows by status; rows without a value sit on the bottom edge."""
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for _, r in sub.iterrows():
        has = pd.notna(r[y])
        key = _status_key(str(r["status"]), has)
        mk, filled, _ = STATUS_MARKERS[key]
        counts[key] = counts.get(key, 0) + 1
        xv = r[x] if pd.notna(r[x]) else r.get("budget_flops", np.nan)
        if not (pd.notna(xv) and xv > 0):
            continue
        kw = dict(marker=mk, s=46 if key == "done" else 40, zorder=3, edgecolors=color,
                  facecolors=color if filled else "none", linewidths=1.4)
        if has and r[y] > 0:
            ax.scatter([xv], [r[y]], **kw)
        else:
            ax.scatter([xv], [0.02], transform=edge, clip_on=False, **kw)


def _draw_law(ax, res: FitResult, color: str, xmin: float, xmax: float, extend: float = 3.0) -> str:
    if res.refused or res.theta is None:
        return f"no fit: {res.reason}"
    xs = np.logspace(np.log10(xmin), np.log10(xmax * extend), 120)
    inside = xs <= xmax * (1 + 1e-9)
    yhat = res.predict(xs)
    ax.plot(xs[inside], yhat[inside], color=color, lw=1.6, zorder=2)
    ax.plot(xs[~inside], yhat[~inside], color=color, lw=1.4, ls="--", zorder=2)
    if res.boot is not None and len(res.boot):
        lo, hi = res.band(xs)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0, zorder=1)
    label = res.formula(3).split(" = ", 1)[1]
    if "alpha" in res.ci:
        a_lo, a_hi = res.ci["alpha"]
        label += f"  α∈[{a_lo:.2g}, {a_hi:.2g}]"
    ex = res.extrapolation
    if ex is not None and not ex.refused:
        flag = "" if ex.inside_ci else " ⚠ outside band"
        label += f"; held-out {100 * ex.rel_error:+.1f}%{flag}"
    elif ex is not None:
        label += "; held-out check: too few x"
    if not res.converged:
        label += "; NOT CONVERGED"
    return label


def _draw_anchors(ax, anchors: pd.DataFrame | None, x: str, y: str, proto: str | None) -> tuple[int, int]:
    """Released tokenizers beside the curves: a labelled star at (x, y), or a labelled dotted line at y when x is
    unknown. Only done rows under the figure's protocol of y; returns (drawn, left out for another protocol)."""
    if anchors is None or not len(anchors):
        return 0, 0
    pc = PROTOCOL_OF.get(y)
    drawn = other = 0
    for _, r in anchors.iterrows():
        if r.get("status") != "done" or not (pd.notna(r[y]) and r[y] > 0):
            continue
        if pc and pc in r and proto is not None and str(r[pc]) != proto:
            other += 1
            continue
        name = str(r["anchor"])
        if x in r and pd.notna(r[x]) and r[x] > 0:
            ax.scatter([r[x]], [r[y]], marker="*", s=160, color="black", zorder=5)
            ax.annotate(f"{name} {r[y]:.3g}", (r[x], r[y]), xytext=(6, 4), textcoords="offset points", fontsize=8)
        else:
            ax.axhline(r[y], color="black", ls=":", lw=1.2, zorder=2)
            ax.annotate(f"{name} {r[y]:.3g} (released)", (1.0, r[y]), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
        drawn += 1
    return drawn, other


def _legend(ax, colors: dict, labels: dict, counts: dict, n_anchors: int = 0) -> None:
    handles = [Line2D([], [], color=colors[g], lw=2, label=f"{g}: {labels.get(g, '')}".rstrip(": "))
               for g in colors]
    if n_anchors:
        handles.append(Line2D([], [], ls="", marker="*", color="black", markersize=10,
                              label=f"released tokenizer, not fitted ({n_anchors})"))
    for key, (mk, filled, text) in STATUS_MARKERS.items():
        if counts.get(key):
            handles.append(Line2D([], [], ls="", marker=mk, color="0.3",
                                  markerfacecolor="0.3" if filled else "none", label=f"{text} ({counts[key]})"))
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)


def plot_scaling(df: pd.DataFrame, x: str = "tokenizer_flops", y: str = "gfid", group: str = "recipe",
                 out_stem=None, *, form: str = "auto", n_boot: int = 1000, fits: dict | None = None,
                 title: str | None = None, anchors: pd.DataFrame | None = None) -> Figure:
    """Log-log y vs x, one colour per ``group``, fitted law + 95% band per group; PNG and SVG. ``anchors``:
    released tokenizers' rows, drawn as labelled points (`_draw_anchors`), never fitted."""
    out_stem = out_stem or f"{y}_vs_{x}"
    rows, protos, n_excl = protocol_rows(df, y)
    groups = sorted(map(str, rows[group].dropna().unique()))
    colors = _colors(groups)
    fits = dict(fits or {})
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ax.set_xscale("log")
    ax.set_yscale("log" if y in LOG_METRICS else "linear")
    counts: dict[str, int] = {}
    labels = {}
    xs_all = done_points(rows, x, y)[x]
    for g in groups:
        sub = rows[rows[group].astype(str) == g]
        if g not in fits:
            fits[g] = fit_column(sub, x, y, form=form, n_boot=n_boot)
        pts = done_points(sub, x, y)
        if len(pts):
            labels[g] = _draw_law(ax, fits[g], colors[g], float(pts[x].min()), float(xs_all.max()))
        else:
            labels[g] = "no done points"
        _draw_points(ax, sub, x, y, colors[g], counts)
    n_anchors, other = _draw_anchors(ax, anchors, x, y, protos.get(y))
    n_excl += other
    placed = rows[x].fillna(rows["budget_flops"]) if "budget_flops" in rows.columns else rows[x]
    placed = placed[placed > 0]
    if len(placed):
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, placed.min() / 1.3), max(hi, placed.max() * 1.3))
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.25)
    caption = _caption(protos, n_excl, "band: 95% bootstrap over cells; dashed: extrapolation")
    ax.set_title(title or f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", fontsize=11, pad=18)
    ax.text(0.5, 1.01, caption, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="0.35")
    _legend(ax, colors, labels, counts, n_anchors)
    paths, ticks = _save(fig, out_stem)
    return Figure(paths, fits, protos, n_excl, caption, ticks)


def _final_points(rows: pd.DataFrame, x: str, y: str, group: str) -> pd.DataFrame:
    """For params/data axes: per (group, x) keep the rows at the largest budget (each curve's end)."""
    if "budget_flops" not in rows.columns or x in ("tokenizer_flops", "budget_flops"):
        return rows
    key = rows[[group, x]].astype(str).agg("|".join, axis=1)
    ok = (rows["status"] == "done") & rows[y].notna()
    top_ok = rows["budget_flops"].where(ok).groupby(key).transform("max")
    top_any = rows.groupby(key)["budget_flops"].transform("max")
    return rows[rows["budget_flops"] == top_ok.fillna(top_any)]


def plot_vs(df: pd.DataFrame, x: str, y: str, group: str = "recipe", out_stem=None, *,
            form: str = "auto", n_boot: int = 1000, anchors: pd.DataFrame | None = None) -> Figure:
    """y vs x per group. Scaling x (params, data, FLOPs): fitted law with band, at each curve's end.
    Metric x (linear_probe, rfid, …): scatter with Spearman ρ per group. ``anchors`` as in `plot_scaling`."""
    out_stem = out_stem or f"{y}_vs_{x}"
    if x in SCALING_AXES:
        rows, protos, n_excl = protocol_rows(df, y)
        rows = _final_points(rows, x, y, group)
        fig = plot_scaling(rows, x=x, y=y, group=group, out_stem=out_stem, form=form, n_boot=n_boot,
                           title=f"{LABELS.get(y, y)} vs {LABELS.get(x, x)} (each curve's largest budget)",
                           anchors=anchors)
        fig.n_excluded += n_excl
        return fig
    rows, protos, n_excl = protocol_rows(df, x, y)
    groups = sorted(map(str, rows[group].dropna().unique()))
    colors = _colors(groups)
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    if x in LOG_METRICS:
        ax.set_xscale("log")
    if y in LOG_METRICS:
        ax.set_yscale("log")
    labels, counts = {}, {}
    for g in groups:
        sub = rows[(rows[group].astype(str) == g) & (rows["status"] == "done")]
        sub = sub[sub[x].notna() & sub[y].notna()]
        counts["done"] = counts.get("done", 0) + len(sub)
        ax.scatter(sub[x], sub[y], color=colors[g], s=40, zorder=3)
        if len(sub) >= 3 and sub[x].nunique() > 1 and sub[y].nunique() > 1:
            rho = spearmanr(sub[x], sub[y]).statistic
            labels[g] = f"Spearman ρ = {rho:+.2f} (n={len(sub)})"
        else:
            labels[g] = f"n={len(sub)}"
    allg = rows[(rows["status"] == "done")].dropna(subset=[x, y])
    extra = ""
    if len(allg) >= 3 and allg[x].nunique() > 1:
        extra = f"all recipes: Spearman ρ = {spearmanr(allg[x], allg[y]).statistic:+.2f}"
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.25)
    caption = _caption(protos, n_excl, extra)
    ax.set_title(f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", fontsize=11, pad=18)
    ax.text(0.5, 1.01, caption, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="0.35")
    n_anchors, _ = _draw_anchors(ax, anchors, x, y, protos.get(y))
    _legend(ax, colors, labels, counts, n_anchors)
    paths, ticks = _save(fig, out_stem)
    return Figure(paths, {}, protos, n_excl, caption, ticks)


def common_budget(df: pd.DataFrame, y: str = "gfid", group: str = "recipe") -> float | None:
    """Largest nominal budget at which the most recipes have a done value of y."""
    pts = done_points(df, "budget_flops", y)
    if pts.empty:
        return None
    n = pts.groupby("budget_flops")[group].nunique()
    best = n[n == n.max()]
    return float(best.index.max())


def plot_recipes_at_equal_flops(df: pd.DataFrame, budget: float | None = None, y: str = "gfid",
                                group: str = "recipe", out_stem=None, *, fits: dict | None = None,
                                n_boot: int = 1000) -> Figure:
    """Each recipe at one nominal budget: observed seeds, their mean, and the law's prediction (95%)."""
    out_stem = out_stem or f"{y}_recipes_at_equal_flops"
    rows, protos, n_excl = protocol_rows(df, y)
    budget = budget if budget is not None else common_budget(rows, y, group)
    groups = sorted(map(str, rows[group].dropna().unique()))
    colors = _colors(groups)
    fits = dict(fits or {})
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 2), 4.5))
    for i, g in enumerate(groups):
        sub = rows[rows[group].astype(str) == g]
        at = sub[sub["budget_flops"] == budget] if budget is not None else sub.iloc[:0]
        pts = at[(at["status"] == "done") & at[y].notna()]
        ax.scatter(np.full(len(pts), i - 0.1), pts[y], color=colors[g], s=30, alpha=0.7, zorder=3,
                   label="observed (per seed)" if i == 0 else None)
        if len(pts):
            ax.scatter([i - 0.1], [pts[y].mean()], marker="_", s=400, color=colors[g], zorder=4)
            ax.annotate(f"{pts[y].mean():.3g}", (i - 0.1, pts[y].mean()), xytext=(-28, 0),
                        textcoords="offset points", fontsize=8, va="center")
        n_bad = int(((at["status"] != "done") | at[y].isna()).sum())
        if n_bad:
            ax.annotate(f"{n_bad} not done", (i, 0.02), xycoords=("data", "axes fraction"),
                        ha="center", fontsize=7, color="firebrick")
        if g not in fits and "tokenizer_flops" in sub.columns:
            fits[g] = fit_column(sub, "tokenizer_flops", y, n_boot=n_boot)
        res = fits.get(g)
        if res is not None and res.ok and budget is not None and len(at):
            xq = float(at["tokenizer_flops"].median()) if at["tokenizer_flops"].notna().any() else budget
            yhat = float(res.predict(xq))
            lo, hi = (v[0] for v in res.band(np.array([xq]))) if res.boot is not None else (yhat, yhat)
            ax.errorbar([i + 0.1], [yhat], yerr=[[yhat - lo], [hi - yhat]], fmt="s", color=colors[g],
                        mfc="white", capsize=4, zorder=3, label="law at this budget (95%)" if i == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(LABELS.get(y, y))
    if y in LOG_METRICS and 0 < ax.dataLim.ymin < np.inf:  # nothing drawn yet (no cell done): a linear empty axis
        ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    caption = _caption(protos, n_excl)
    ax.set_title(f"{LABELS.get(y, y)} per recipe at budget {budget:.3g} FLOPs" if budget else
                 f"{LABELS.get(y, y)} per recipe: no common budget", fontsize=11, pad=18)
    ax.text(0.5, 1.01, caption, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="0.35")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best")
    paths, ticks = _save(fig, out_stem)
    return Figure(paths, fits, protos, n_excl, caption, ticks)
