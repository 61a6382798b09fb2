"""Recipe comparisons read off fitted laws, with bootstrap intervals.

"B reaches A's best gFID with X× less tokenizer compute": the target is A's best observed value
(done rows, dominant protocol) and A's compute is what A actually spent for it; B's compute is B's
law solved for the target, per bootstrap replica, so the interval is B's law uncertainty. With an
explicit ``target`` both computes come from the laws (independent replicas paired by index).

A law that does not decrease (α ≤ 0), or whose floor E is above the target, never reaches it: those
replicas count as unreachable (compute = ∞) and the fraction is reported; an interval bound may then
be ∞.

A law is read at most `EXTRAPOLATE` (4×) beyond the compute it was fitted on (either side). Where B's
law would reach the target further out, the sentence says "outside the measured range" and gives that
range instead of a multiplier; an interval bound beyond it is printed as that limit ("more than …×").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.fit import FitResult, get_form
from analysis.table import done_points, fit_column, protocol_rows


EXTRAPOLATE = 4.0  # how far beyond its measured range (a factor of x) a fitted law is read


class CompareError(ValueError):
    """Bad comparison request; ``str(err)`` is one line."""


@dataclass
class Reach:
    target: float
    x: float                      # point estimate (∞ if unreachable)
    ci: tuple[float, float]
    frac_unreachable: float
    level: float = 0.95

    def __str__(self) -> str:
        pct = int(round(100 * self.level))
        return (f"reaches {self.target:.4g} at {self.x:.3g} ({pct}% CI {self.ci[0]:.3g}–{self.ci[1]:.3g}"
                + (f"; unreachable in {100 * self.frac_unreachable:.0f}% of resamples" if self.frac_unreachable else "")
                + ")")


def _inverse(form: str, th: np.ndarray, x_scale: float, target: float) -> np.ndarray:
    """x at which each law θ (B, p) equals target; ∞ where it never gets down to it."""
    f = get_form(form)
    if f.ndim != 1:
        raise CompareError(f"compute-to-target needs a 1-D law, not {form}")
    nat = f.natural(th)
    if form == "power":
        E, A, al = 0.0, nat[:, 0], nat[:, 1]
    else:
        E, A, al = nat[:, 0], nat[:, 1], nat[:, 2]
    gap = target - E
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = x_scale * (gap / A) ** (-1.0 / al)
    ok = (al > 0) & (gap > 0) & np.isfinite(x)
    return np.where(ok, x, np.inf)


def _q(v: np.ndarray, level: float) -> tuple[float, float]:
    v = v[~np.isnan(v)]
    if not len(v):
        return (float("nan"), float("nan"))
    q = (1 - level) / 2
    lo, hi = np.quantile(v, [q, 1 - q], method="inverted_cdf")   # no interpolation through ∞
    return float(lo), float(hi)


def compute_to_reach(fit: FitResult, target: float, level: float | None = None) -> Reach:
    """Compute (the fit's x) at which the law reaches ``target``, with its bootstrap interval."""
    if not fit.ok:
        raise CompareError(f"no usable law ({fit.reason or 'did not converge'})")
    level = fit.level if level is None else level
    x = float(_inverse(fit.form, fit.theta[None, :], fit.x_scale[0], target)[0])
    if fit.boot is None or not len(fit.boot):
        return Reach(target, x, (float("nan"), float("nan")), float("nan"), level)
    boot = fit.boot[np.isfinite(fit.boot).all(axis=1)]
    xb = _inverse(fit.form, boot, fit.x_scale[0], target)
    return Reach(target, x, _q(xb, level), float(np.isinf(xb).mean()), level)


@dataclass
class Comparison:
    a: str
    b: str
    target: float
    x_a: float
    x_b: Reach
    multiplier: float               # x_a / x_b: > 1 means B needs less compute
    ci: tuple[float, float]
    y: str = "gfid"
    x: str = "tokenizer_flops"
    target_source: str = ""
    range_a: tuple[float, float] = (float("nan"), float("nan"))  # the x each law was fitted on
    range_b: tuple[float, float] = (float("nan"), float("nan"))
    limit: float = EXTRAPOLATE

    def _outside(self, x: float, rng: tuple[float, float]) -> bool:
        lo, hi = rng
        return bool(np.isfinite(lo) and np.isfinite(hi) and not lo / self.limit <= x <= hi * self.limit)

    def sentence(self) -> str:
        pct = int(round(100 * self.x_b.level))
        m, (lo, hi) = self.multiplier, self.ci
        what = f"{self.a}'s {self.target_source} {self.y} ({self.target:.4g})"
        xname = self.x.replace("_", " ")
        if not np.isfinite(self.x_b.x):
            return f"{self.b} does not reach {what} on its fitted law (α ≤ 0 or floor above it)"
        if not np.isfinite(self.x_a):
            return (f"{self.a} does not reach {what} on its fitted law; {self.b} {self.x_b}"
                    .replace(f"{self.a}'s {self.target_source} ", ""))
        for name, x, rng in ((self.b, self.x_b.x, self.range_b), (self.a, self.x_a, self.range_a)):
            if self._outside(x, rng):
                return (f"{name}'s law would reach {what} at {x:.3g} {xname}: outside the measured range "
                        f"({rng[0]:.3g}–{rng[1]:.3g} {xname}; laws are read at most {self.limit:g}× beyond it), "
                        f"so no multiplier is given")
        # multipliers whose B compute lies within the readable range (A's compute held at its value)
        m_lo, m_hi = ((self.x_a / (self.range_b[1] * self.limit), self.x_a * self.limit / self.range_b[0])
                      if np.isfinite(self.range_b[0]) else (0.0, np.inf))
        cut_lo, cut_hi = not lo >= m_lo, not hi <= m_hi
        lo, hi = max(lo, m_lo), min(hi, m_hi)
        if m >= 1:
            txt = f"{self.b} reaches {what} with {m:.3g}× less {xname}"
            ci = f"{pct}% CI {'less than ' * cut_lo}{lo:.3g}×–{'more than ' * cut_hi}{hi:.3g}×"
        else:
            txt = f"{self.b} needs {1 / m:.3g}× more {xname} than {self.a} to reach {what}"
            ci = (f"{pct}% CI {'less than ' * cut_hi}{1 / hi if hi else np.inf:.3g}×–"
                  f"{'more than ' * cut_lo}{1 / lo if lo else np.inf:.3g}× more")
        if cut_lo or cut_hi:
            ci += "; the rest of the interval lies outside the measured range"
        extra = (f"; {self.b} never reaches it in {100 * self.x_b.frac_unreachable:.0f}% of resamples"
                 if self.x_b.frac_unreachable else "")
        return f"{txt} ({ci}{extra})"


def compare_fits(fit_a: FitResult, fit_b: FitResult, target: float, x_a: float | None = None,
                 a: str = "A", b: str = "B", level: float = 0.95, target_source: str = "target") -> Comparison:
    """Multiplier x_A/x_B to reach ``target``. ``x_a`` fixed (A's measured compute) or from A's law."""
    rb = compute_to_reach(fit_b, target, level)
    bb = fit_b.boot[np.isfinite(fit_b.boot).all(axis=1)]
    xb = _inverse(fit_b.form, bb, fit_b.x_scale[0], target)
    if x_a is None:
        ra = compute_to_reach(fit_a, target, level)
        ba = fit_a.boot[np.isfinite(fit_a.boot).all(axis=1)]
        xa_b = _inverse(fit_a.form, ba, fit_a.x_scale[0], target)
        n = min(len(xa_b), len(xb))
        xa_pt, xa_b, xb = ra.x, xa_b[:n], xb[:n]
    else:
        xa_pt, xa_b = float(x_a), float(x_a)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(xa_b / xb, dtype=float)
        point = xa_pt / rb.x
    return Comparison(a, b, target, xa_pt, rb, float(point), _q(ratio, level), target_source=target_source,
                      y=fit_b.y_name, x=fit_b.x_name, range_a=tuple(fit_a.x_range), range_b=tuple(fit_b.x_range))


def compare_recipes(df: pd.DataFrame, a: str, b: str, *, x: str = "tokenizer_flops", y: str = "gfid",
                    group: str = "recipe", target: float | None = None, n_boot: int = 1000,
                    fits: dict[str, FitResult] | None = None, level: float = 0.95) -> Comparison:
    """How much less (or more) compute B needs to reach A's best observed y (or ``target``)."""
    known = sorted(map(str, df[group].dropna().unique()))
    for r in (a, b):
        if r not in known:
            raise CompareError(f"unknown {group} {r!r}; the table has: {', '.join(known) or 'none'}")
    rows, _, _ = protocol_rows(df, y)
    fits = dict(fits or {})
    for r in (a, b):
        if r not in fits:
            fits[r] = fit_column(rows[rows[group].astype(str) == r], x, y, n_boot=n_boot)
        if not fits[r].ok:
            raise CompareError(f"{r}: no usable {y} law ({fits[r].reason or 'fit did not converge'})")
    if target is None:
        pa = done_points(rows[rows[group].astype(str) == a], x, y)
        best = pa.loc[pa[y].idxmin()]
        return compare_fits(fits[a], fits[b], float(best[y]), x_a=float(best[x]), a=a, b=b, level=level,
                            target_source="best")
    return compare_fits(fits[a], fits[b], float(target), a=a, b=b, level=level, target_source="target")
