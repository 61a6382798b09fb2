"""Power-law fits with bootstrap intervals, a convergence check, refusals and an extrapolation gate.

Why it looks like this (docs/protocol.md#scaling-law-fits):

* Forms are fitted in log space (gFID > 0), as Chinchilla Approach 3 / Porian et al. do:
  ``power``         log y = a − α·u                              (y = A·(x/x0)^-α)
  ``offset_power``  log y = logaddexp(e, a − α·u)                (y = E + A·(x/x0)^-α)
  ``chinchilla``    log y = logsumexp(e, a − α·u, b − β·v)       (y = E + A/(N/N0)^α + B/(D/D0)^β)
  with u = ln(x/x0), x0 a power of ten near the data (keeps A readable and the problem well scaled).
* The objective is the SUM (never the mean) of Huber(δ=1e-3) on log residuals: with a mean, the
  optimiser's tolerances stop it early (Epoch's Chinchilla replication; marin#749). Tolerances are
  tight as well.
* α ≤ 0 is a valid answer (a reconstruction-only tokenizer may get worse with compute); α is bounded
  only to |α| ≤ 5 to keep exp() finite.
* The start grid is solved all at once by a batched, damped IRLS (Gauss-Newton on the Huber
  majoriser) in numpy; the best few are polished with ``scipy.optimize`` L-BFGS-B and the best is
  kept. A fit whose polish did not converge is reported with ``converged=False``.
* Bootstrap: case resampling over cells (rows), and, when an x has several seeds, a second bootstrap
  that resamples seeds within each x. A resample is a vector of row counts, so all resamples are
  refitted together by the same batched solver, warm-started from the full-data optimum; the few that
  do not converge are re-run with L-BFGS-B from a small start grid. 1000 resamples of a 3-parameter law
  on ~10 points take well under a second.
* Refusal (``FitRefused``, or ``fit(..., raise_on_refusal=False)`` → ``FitResult.refused``) when there
  are non-positive values, all-equal x, or fewer distinct x than parameters + 1.
* Extrapolation gate: refit without the largest x, predict it, report predicted vs observed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import minimize

DELTA = 1e-3
ALPHA_BOUND = 5.0
LOG_BOUND = 60.0
E_FLOOR = math.log(1e3)     # E ≥ min(y)/1000
FORMS = ("power", "offset_power", "chinchilla")


class FitRefused(ValueError):
    """The data cannot support the requested law; ``str(err)`` is a one-line reason."""


# ---------------------------------------------------------------- forms (vectorised over θ rows)

@dataclass(frozen=True)
class Form:
    name: str
    theta_names: tuple[str, ...]   # internal parameters (log-amplitudes, exponents)
    names: tuple[str, ...]         # reported parameters (amplitudes exponentiated)
    ndim: int                      # 1: x; 2: (N, D)

    @property
    def p(self) -> int:
        return len(self.theta_names)

    def model(self, th: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """th (B, p), U (n, ndim) → log-prediction m (B, n) and Jacobian J (B, n, p)."""
        u = U[:, 0][None, :]
        if self.name == "power":
            a, al = th[:, 0:1], th[:, 1:2]
            m = a - al * u
            J = np.stack([np.ones_like(m), -np.broadcast_to(u, m.shape)], axis=-1)
            return m, J
        if self.name == "offset_power":
            e, a, al = th[:, 0:1], th[:, 1:2], th[:, 2:3]
            t = a - al * u
            m = np.logaddexp(e, t)
            pa = np.exp(t - m)
            J = np.empty(m.shape + (3,))
            J[..., 0] = 1.0 - pa
            J[..., 1] = pa
            np.multiply(-u, pa, out=J[..., 2])
            return m, J
        v = U[:, 1][None, :]
        e, a, al, b, be = (th[:, i:i + 1] for i in range(5))
        t1, t2 = a - al * u, b - be * v
        t0 = np.broadcast_to(e, t1.shape)
        mx = np.maximum(np.maximum(t0, t1), t2)
        p0, p1, p2 = np.exp(t0 - mx), np.exp(t1 - mx), np.exp(t2 - mx)
        s = p0 + p1 + p2
        m = mx + np.log(s)
        p0, p1, p2 = p0 / s, p1 / s, p2 / s
        J = np.stack([p0, p1, -u * p1, p2, -v * p2], axis=-1)
        return m, J

    def natural(self, th: np.ndarray) -> np.ndarray:
        """Internal θ (…, p) → reported parameters (amplitudes exponentiated)."""
        out = np.array(th, dtype=float, copy=True)
        for i, n in enumerate(self.theta_names):
            if n.startswith("log"):
                out[..., i] = np.exp(out[..., i])
        return out

    def bounds(self, ly: np.ndarray | None = None) -> list[tuple[float, float]]:
        """Amplitudes: |log| ≤ 60; the floor E ≥ 1e-3·min y (below that it is 0 for any purpose, and
        an unbounded log E drifts along a flat valley when the data show no floor); |α|, |β| ≤ 5."""
        out = []
        for n in self.theta_names:
            if n == "logE" and ly is not None:
                out.append((float(ly.min()) - E_FLOOR, float(ly.max()) + 1.0))
            elif n.startswith("log"):
                out.append((-LOG_BOUND, LOG_BOUND))
            else:
                out.append((-ALPHA_BOUND, ALPHA_BOUND))
        return out

    def start_grid(self, ly: np.ndarray, small: bool = False) -> np.ndarray:
        lo, med = float(ly.min()), float(np.median(ly))
        if self.name == "power":
            a, al = ([0.0], [0.0, 0.5]) if small else ([-1.0, 0.0, 1.0], [-0.5, 0.0, 0.5, 1.0, 2.0])
            grid = [(med + da, x) for da in a for x in al]
        elif self.name == "offset_power":
            fe = [0.5, 0.9] if small else [0.1, 0.5, 0.9]
            da = [-1.0, 0.0] if small else [-3.0, -1.0, 0.0, 1.0]
            al = [0.2, 1.0] if small else [-0.5, 0.1, 0.5, 1.0, 2.0]
            grid = [(lo + math.log(f), med + d, x) for f in fe for d in da for x in al]
        else:
            fe = [0.5] if small else [0.2, 0.8]
            da = [-1.0] if small else [-3.0, -1.0, 0.0]
            al = [0.3, 1.0] if small else [0.0, 0.3, 0.7, 1.5]
            grid = [(lo + math.log(f), med + d1, a1, med + d2, a2)
                    for f in fe for d1 in da for a1 in al for d2 in da for a2 in al]
        return np.array(grid, dtype=float)


_FORMS = {
    "power": Form("power", ("logA", "alpha"), ("A", "alpha"), 1),
    "offset_power": Form("offset_power", ("logE", "logA", "alpha"), ("E", "A", "alpha"), 1),
    "chinchilla": Form("chinchilla", ("logE", "logA", "alpha", "logB", "beta"), ("E", "A", "alpha", "B", "beta"), 2),
}


def get_form(name: str) -> Form:
    try:
        return _FORMS[name]
    except KeyError:
        raise FitRefused(f"unknown form {name!r}; allowed: {', '.join(FORMS)}") from None


# ---------------------------------------------------------------- objective and solvers

def _huber(r: np.ndarray) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= DELTA, 0.5 * r * r, DELTA * (a - 0.5 * DELTA))


def _loss(form: Form, th: np.ndarray, U: np.ndarray, ly: np.ndarray, c: np.ndarray) -> np.ndarray:
    m, _ = form.model(th, U)
    return (c * _huber(ly[None, :] - m)).sum(axis=1)


def _scipy_fit(form: Form, th0: np.ndarray, U, ly, c) -> tuple[np.ndarray, float, bool, str]:
    """One L-BFGS-B run on the summed Huber loss; returns θ, loss, converged, message."""
    def fun(th):
        m, J = form.model(th[None, :], U)
        r = ly - m[0]
        g = -(c * np.clip(r, -DELTA, DELTA)) @ J[0]
        return float((c * _huber(r)).sum()), g

    res = minimize(fun, th0, jac=True, method="L-BFGS-B", bounds=form.bounds(ly),
                   options=dict(maxiter=5000, maxfun=20000, ftol=1e-15, gtol=1e-12))
    # L-BFGS-B often stops with ABNORMAL_TERMINATION_IN_LNSRCH at machine precision: accept that
    # when the projected gradient is negligible against the loss scale (δ · Σ weights).
    _, g = fun(res.x)
    lo, hi = np.array(form.bounds(ly)).T
    pg = np.where((res.x <= lo + 1e-12) & (g > 0) | (res.x >= hi - 1e-12) & (g < 0), 0.0, g)
    small_grad = float(np.abs(pg).max()) <= 1e-6 * DELTA * max(c.sum(), 1.0)
    ok = bool(res.success or small_grad) and res.nit < 5000
    return res.x, float(res.fun), ok, str(res.message)


def _lm_batch(form: Form, th0: np.ndarray, U, ly, C, max_iter: int = 300, tol: float = 1e-10):
    """Damped IRLS / Levenberg–Marquardt on the summed Huber loss, for B problems at once.

    th0 (B, p) starts, C (B, n) row weights (bootstrap counts). Returns θ, loss, converged mask.
    IRLS weights ψ(r)/r = min(1, δ/|r|) make each step the minimiser of a quadratic majoriser of
    the Huber loss (guaranteed descent for a linear model); the damping handles the curvature.
    """
    lo, hi = np.array(form.bounds(ly)).T
    th = np.clip(th0.astype(float), lo, hi)
    B, p = th.shape
    loss = _loss(form, th, U, ly, C)
    lam = np.full(B, 1e-3)
    done = np.zeros(B, bool)
    eye = np.eye(p)
    snap = loss.copy()
    for it in range(max_iter):
        if it and it % 20 == 0:      # stagnating along a flat valley (a non-identified direction)
            done |= (snap - loss) <= 1e-7 * np.abs(loss)
            snap = loss.copy()
        act = ~done
        if not act.any():
            break
        ta, ca = th[act], C[act]
        m, J = form.model(ta, U)
        r = ly[None, :] - m
        w = ca * np.minimum(1.0, DELTA / np.maximum(np.abs(r), 1e-300))
        Jw = J.transpose(0, 2, 1) * w[:, None, :]
        H = Jw @ J
        g = (Jw @ r[..., None])[..., 0]
        # projected step: a parameter at a bound whose descent direction points outwards is held fixed
        fix = ((ta <= lo + 1e-12) & (g < 0)) | ((ta >= hi - 1e-12) & (g > 0))
        free = (~fix).astype(float)
        H = H * free[:, :, None] * free[:, None, :] + fix[:, :, None] * eye
        g = g * free
        dH = np.diagonal(H, axis1=1, axis2=2)
        A = H + lam[act, None, None] * (dH[:, :, None] * eye + 1e-12 * eye)
        try:
            step = np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = (np.linalg.pinv(A) @ g[..., None])[..., 0]
        tn = np.clip(ta + step, lo, hi)
        ln = _loss(form, tn, U, ly, ca)
        old = loss[act]
        acc = ln <= old
        idx = np.flatnonzero(act)
        th[idx[acc]] = tn[acc]
        loss[idx[acc]] = ln[acc]
        lam[idx] = np.where(acc, np.maximum(lam[idx] / 3.0, 1e-9), lam[idx] * 5.0)
        small = (np.abs(tn - ta).max(axis=1) < 1e-9) | (acc & (old - ln <= tol * np.maximum(old, 1e-300)))
        stuck = ~acc & (lam[idx] > 1e10)
        done[idx[small | stuck]] = True
    return th, loss, done


def _distinct(U: np.ndarray) -> int:
    return len(np.unique(U, axis=0))


# ---------------------------------------------------------------- result objects

@dataclass
class Extrapolation:
    held_out_x: object
    predicted: float = float("nan")
    observed: float = float("nan")
    rel_error: float = float("nan")
    ci: tuple[float, float] = (float("nan"), float("nan"))
    refused: bool = False
    reason: str = ""
    form: str = ""  # the law refitted without the largest x (the fitted one, or its 2-parameter power law)

    @property
    def inside_ci(self) -> bool:
        return bool(self.ci[0] <= self.observed <= self.ci[1])

    def __str__(self) -> str:
        if self.refused:
            return f"extrapolation check refused: {self.reason}"
        return (f"held-out x={_fmt(self.held_out_x)}: predicted {self.predicted:.4g} "
                f"[{self.ci[0]:.4g}, {self.ci[1]:.4g}] vs observed {self.observed:.4g} "
                f"({100 * self.rel_error:+.1f}%)" + (f", {self.form} law" if self.form else ""))


@dataclass
class FitResult:
    form: str
    params: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_points: int = 0
    converged: bool = False
    loss: float = float("nan")
    refused: bool = False
    reason: str = ""
    extrapolation: Extrapolation | None = None
    x_scale: tuple[float, ...] = (1.0,)
    level: float = 0.95
    ci_seed: dict[str, tuple[float, float]] | None = None
    pred_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0
    n_dropped: int = 0
    n_starts_at_best: int = 0
    warnings: list[str] = field(default_factory=list)
    x_name: str = "x"
    y_name: str = "y"
    x_range: tuple[float, float] = (float("nan"), float("nan"))
    theta: np.ndarray | None = field(default=None, repr=False)
    boot: np.ndarray | None = field(default=None, repr=False)        # (n_boot, p) internal θ

    @property
    def ok(self) -> bool:
        return not self.refused and self.converged

    def _U(self, x) -> np.ndarray:
        X = np.asarray(x, dtype=float)
        if get_form(self.form).ndim == 1:
            X = X.reshape(-1, 1)
        else:
            X = np.atleast_2d(X)
        return np.log(X / np.asarray(self.x_scale)[None, :])

    def predict(self, x) -> np.ndarray:
        """Point prediction y(x) (x: scalar/array; for ``chinchilla`` an (n, 2) array of (N, D))."""
        if self.refused or self.theta is None:
            raise FitRefused(f"no law to predict from: {self.reason}")
        m, _ = get_form(self.form).model(self.theta[None, :], self._U(x))
        out = np.exp(m[0])
        return out if np.ndim(x) > (0 if get_form(self.form).ndim == 1 else 1) else out[0]

    def band(self, x, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the prediction at x from the bootstrap replicas."""
        if self.boot is None or not len(self.boot):
            raise FitRefused("no bootstrap replicas (n_boot=0 or refused)")
        level = self.level if level is None else level
        boot = self.boot[np.isfinite(self.boot).all(axis=1)]
        m, _ = get_form(self.form).model(boot, self._U(x))
        q = 100 * (1 - level) / 2
        lo, hi = np.nanpercentile(np.exp(m), [q, 100 - q], axis=0)
        return lo, hi

    def formula(self, digits: int = 3) -> str:
        if self.refused:
            return f"{self.y_name}: fit refused ({self.reason})"
        p, d = self.params, digits
        xs = self.x_scale

        def term(amp, exp_, var, scale):
            return f"{amp:.{d}g}·({var}/{scale:.0e})^{-exp_:.{d}g}"

        if self.form == "power":
            body = term(p["A"], p["alpha"], self.x_name, xs[0])
        elif self.form == "offset_power":
            body = f"{p['E']:.{d}g} + " + term(p["A"], p["alpha"], self.x_name, xs[0])
        else:
            body = (f"{p['E']:.{d}g} + " + term(p["A"], p["alpha"], "N", xs[0]) + " + "
                    + term(p["B"], p["beta"], "D", xs[1]))
        return f"{self.y_name} = {body}"

    def summary(self) -> str:
        """One line per parameter with its interval, then fit facts."""
        if self.refused:
            return self.formula()
        pct = int(round(100 * self.level))
        lines = [self.formula()]
        for k, v in self.params.items():
            lo, hi = self.ci.get(k, (float("nan"), float("nan")))
            lines.append(f"  {k:>5} = {v:.4g}   {pct}% CI [{lo:.4g}, {hi:.4g}]")
        lines.append(f"  n={self.n_points}, loss={self.loss:.3g}, converged={self.converged}, "
                     f"bootstrap={self.n_boot}")
        if self.extrapolation is not None:
            lines.append(f"  {self.extrapolation}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, (tuple, list, np.ndarray)):
        return "(" + ", ".join(f"{float(v):.3g}" for v in np.ravel(x)) + ")"
    return f"{float(x):.3g}"


# ---------------------------------------------------------------- public API

def _prepare(x, y, form: Form):
    X = np.asarray(x, dtype=float)
    Y = np.asarray(y, dtype=float).reshape(-1)
    X = X.reshape(-1, 1) if form.ndim == 1 else X.reshape(-1, 2)
    if len(X) != len(Y):
        raise FitRefused(f"x has {len(X)} rows but y has {len(Y)}")
    keep = np.isfinite(Y) & np.isfinite(X).all(axis=1)
    X, Y = X[keep], Y[keep]
    dropped = int((~keep).sum())
    if (Y <= 0).any() or (X <= 0).any():
        bad = Y[Y <= 0] if (Y <= 0).any() else X[(X <= 0).any(axis=1)].ravel()
        raise FitRefused(f"non-positive values (e.g. {bad[0]:g}) cannot be fitted in log space")
    if len(Y) == 0:
        raise FitRefused("no finite points to fit")
    for j in range(form.ndim):
        if np.ptp(X[:, j]) == 0:
            axis = "x" if form.ndim == 1 else "ND"[j]
            raise FitRefused(f"all {len(Y)} points have the same {axis}={X[0, j]:g}: no slope to fit")
    k = _distinct(X)
    if k < form.p + 1:
        raise FitRefused(f"{k} distinct x for a {form.p}-parameter {form.name} law: need at least {form.p + 1}")
    scale = tuple(10.0 ** np.round(np.log10(X).mean(axis=0)))
    U = np.log(X / np.asarray(scale)[None, :])
    return X, Y, U, scale, dropped


def _solve_full(form: Form, U, ly) -> tuple[np.ndarray, float, bool, str, int]:
    c = np.ones(len(ly))
    starts = form.start_grid(ly)
    th, loss, _ = _lm_batch(form, starts, U, ly, np.broadcast_to(c, (len(starts), len(c))))
    order = np.argsort(loss)
    best = None
    for i in order[:3]:                                  # polish the best three with L-BFGS-B
        t, l, ok, msg = _scipy_fit(form, th[i], U, ly, c)
        if best is None or l < best[1] - 1e-15:
            best = (t, l, ok, msg)
    t, l, ok, msg = best
    same = int((np.abs(loss - l) <= 1e-6 * max(l, 1e-12) + 1e-14).sum())
    return t, l, ok, msg, same


def _boot_counts(rng, groups: np.ndarray, n_boot: int, within: bool) -> np.ndarray:
    n = len(groups)
    if not within:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    C = np.zeros((n_boot, n))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        C[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return C


def _bootstrap(form: Form, theta, U, ly, C) -> tuple[np.ndarray, int]:
    """Refit every resample (rows of C = counts); returns θ replicas (NaN rows = unusable)."""
    groups = np.unique(U, axis=0, return_inverse=True)[1].reshape(-1)
    G = np.zeros((len(ly), groups.max() + 1))
    G[np.arange(len(ly)), groups] = 1.0
    usable = ((C @ G) > 0).sum(axis=1) >= form.p     # a resample must still identify the law
    starts = np.vstack([theta[None, :], form.start_grid(ly, small=True)])     # (S, p)
    S, B = len(starts), len(C)
    # every resample × every start in one batch; keep each resample's best start
    th_all, l_all, c_all = _lm_batch(form, np.repeat(starts[None], B, 0).reshape(-1, form.p), U, ly,
                                     np.repeat(C, S, axis=0), max_iter=100, tol=1e-9)
    l_all = np.where(np.isfinite(l_all), l_all, np.inf).reshape(B, S)
    best = l_all.argmin(axis=1)
    th = th_all.reshape(B, S, form.p)[np.arange(B), best]
    conv = c_all.reshape(B, S)[np.arange(B), best]
    n_fallback = 0
    for b in np.flatnonzero(usable & ~conv):          # polish the few that did not settle
        n_fallback += 1
        t, _, ok, _ = _scipy_fit(form, th[b], U, ly, C[b])
        th[b] = t if ok else np.nan
    th[~usable] = np.nan
    return th, n_fallback


def _ci(form: Form, boot: np.ndarray, level: float) -> dict[str, tuple[float, float]]:
    q = 100 * (1 - level) / 2
    nat = form.natural(boot)
    lo, hi = np.nanpercentile(nat, [q, 100 - q], axis=0)
    return {n: (float(a), float(b)) for n, a, b in zip(form.names, lo, hi)}


def fit(x, y, form: str = "offset_power", *, n_boot: int = 1000, level: float = 0.95,
        seed: int = 0, at: Sequence[float] | None = None, extrapolate: bool = True,
        seeds_bootstrap: bool = True, raise_on_refusal: bool = True,
        x_name: str = "x", y_name: str = "y") -> FitResult:
    """Fit ``form`` to (x, y) with bootstrap percentile intervals.

    x: (n,) for 1-D forms, (n, 2) = (N, D) for ``chinchilla``; rows with NaN y are dropped (counted
    in ``n_dropped``); several rows at one x are seeds. ``at``: x values to report prediction
    intervals for (``pred_ci``). Refusal raises ``FitRefused`` unless ``raise_on_refusal=False``.
    """
    f = get_form(form)
    try:
        X, Y, U, scale, dropped = _prepare(x, y, f)
    except FitRefused as e:
        if raise_on_refusal:
            raise
        return FitResult(form=form, refused=True, reason=str(e), x_name=x_name, y_name=y_name)
    ly = np.log(Y)
    theta, loss, ok, msg, same = _solve_full(f, U, ly)
    res = FitResult(form=form, n_points=len(Y), converged=ok, loss=loss, x_scale=scale, level=level,
                    n_dropped=dropped, n_starts_at_best=same, theta=theta, x_name=x_name, y_name=y_name,
                    params=dict(zip(f.names, map(float, f.natural(theta)))),
                    x_range=(float(X[:, 0].min()), float(X[:, 0].max())))
    if not ok:
        res.warnings.append(f"optimiser did not converge: {msg}")
    lo, hi = np.array(f.bounds(ly)).T
    for n, t, a, b in zip(f.theta_names, theta, lo, hi):
        if n == "logE" and t - a < 1e-6:
            res.warnings.append("E at its floor (min y/1000): the data show no floor; a pure power law fits as well")
        elif min(t - a, b - t) < 1e-6:
            res.warnings.append(f"{n} at its bound ({t:.3g}): the law is not identified by these points")
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        groups = np.unique(U, axis=0, return_inverse=True)[1].reshape(-1)
        boot, nfb = _bootstrap(f, theta, U, ly, _boot_counts(rng, groups, n_boot, within=False))
        res.boot, res.n_boot = boot, int(np.isfinite(boot).all(axis=1).sum())
        res.ci = _ci(f, boot, level)
        if res.n_boot < 0.9 * n_boot:
            res.warnings.append(f"only {res.n_boot}/{n_boot} bootstrap resamples gave a fit")
        if seeds_bootstrap and len(np.unique(groups)) < len(groups):
            sb, _ = _bootstrap(f, theta, U, ly, _boot_counts(rng, groups, n_boot, within=True))
            res.ci_seed = _ci(f, sb, level)
        if at is not None:
            a_lo, a_hi = res.band(np.asarray(at, dtype=float))
            keys = [tuple(map(float, r)) for r in np.atleast_2d(at)] if f.ndim == 2 else list(map(float, np.ravel(at)))
            res.pred_ci = {k: (float(l), float(h)) for k, l, h in zip(keys, a_lo, a_hi)}
    if extrapolate:
        res.extrapolation = extrapolation_check(X if f.ndim == 2 else X[:, 0], Y, form, level=level,
                                                n_boot=min(n_boot, 200), seed=seed)
    return res


def extrapolation_check(x, y, form: str = "offset_power", *, level: float = 0.95,
                        n_boot: int = 200, seed: int = 0) -> Extrapolation:
    """Refit without the largest x (for ``chinchilla``: the largest N·D) and predict it.

    Several seeds at the held-out x are averaged (geometric mean, matching the log-space fit). When the points
    left are too few x for an ``offset_power`` law (four budgets leave three), the check refits the pure power
    law, the same fallback `analysis.table.fit_column` makes, and says so (``form``).
    """
    f = get_form(form)
    X = np.asarray(x, dtype=float)
    X = X.reshape(-1, 1) if f.ndim == 1 else X.reshape(-1, 2)
    Y = np.asarray(y, dtype=float).reshape(-1)
    keep = np.isfinite(Y) & np.isfinite(X).all(axis=1)
    X, Y = X[keep], Y[keep]
    if not len(Y):
        return Extrapolation(held_out_x=float("nan"), refused=True, reason="no points")
    key = X.prod(axis=1)
    held = key == key.max()
    hx = X[held][0]
    hx_out = float(hx[0]) if f.ndim == 1 else tuple(map(float, hx))
    forms = (form, "power") if form == "offset_power" else (form,)
    for i, name in enumerate(forms):
        try:
            r = fit(X[~held] if f.ndim == 2 else X[~held, 0], Y[~held], name, n_boot=n_boot, level=level,
                    seed=seed, extrapolate=False, seeds_bootstrap=False)
            break
        except FitRefused as e:
            if i == len(forms) - 1:
                return Extrapolation(held_out_x=hx_out, refused=True, reason=f"without the largest x: {e}")
    xq = hx[None, :] if f.ndim == 2 else hx[:1]
    pred = float(np.ravel(r.predict(xq))[0])
    obs = float(np.exp(np.log(Y[held]).mean()))
    ci = tuple(float(np.ravel(v)[0]) for v in r.band(xq)) if r.boot is not None else (float("nan"),) * 2
    return Extrapolation(held_out_x=hx_out, predicted=pred, observed=obs, rel_error=(pred - obs) / obs, ci=ci,
                         form=name)
