"""analysis.fit: synthetic truth is recovered, intervals cover it, refusals are clear, α ≤ 0 is fine."""
from __future__ import annotations


import numpy as np
import pytest

from analysis.fit import FitRefused, extrapolation_check, fit

X10 = np.logspace(15, 18, 10)
TRUTH = {"power": dict(A=60.0, alpha=0.4), "offset_power": dict(E=20.0, A=50.0, alpha=0.5)}


def law(form, x, p):
    return p.get("E", 0.0) + p["A"] * (x / 1e16) ** -p["alpha"]


@pytest.mark.parametrize("form", ["power", "offset_power"])
def test_coverage_of_95pct_interval(form):
    """100 noisy draws of a known law (10 points over 3 decades, 3% log-normal noise): the 95% bootstrap
    interval of every parameter must contain the truth in ≥ 90 draws.

    200 resamples per draw (not 1000) keep this test short: the 2.5/97.5 percentiles of 200 replicas
    sit at the 5th/195th order statistic, enough to check coverage; 1000 is the default of fit().
    """
    truth = TRUTH[form]
    rng = np.random.default_rng(123)
    hits = {k: 0 for k in truth}
    for d in range(100):
        y = law(form, X10, truth) * np.exp(rng.normal(0, 0.03, X10.size))
        r = fit(X10, y, form, n_boot=200, extrapolate=False, seed=d)
        assert r.converged and not r.refused
        for k, v in truth.items():
            hits[k] += r.ci[k][0] <= v <= r.ci[k][1]
    assert min(hits.values()) >= 90, hits


def test_point_estimate_and_formula():
    y = law("offset_power", X10, TRUTH["offset_power"])
    r = fit(X10, y, "offset_power", n_boot=100, x_name="C", y_name="gfid", at=[1e19])
    for k, v in TRUTH["offset_power"].items():
        assert r.params[k] == pytest.approx(v, rel=1e-3)
    assert r.formula().startswith("gfid = 20")
    assert "(C/1e+16)^-0.5" in r.formula()
    assert r.predict(1e17) == pytest.approx(law("offset_power", 1e17, TRUTH["offset_power"]), rel=1e-4)
    lo, hi = r.pred_ci[1e19]
    assert lo <= r.predict(1e19) <= hi
    assert r.extrapolation.rel_error == pytest.approx(0, abs=1e-3)
    assert "CI" in r.summary()


def test_bootstrap_1000_resamples():
    """1000 bootstrap refits of a 3-parameter law on 10 points all settle (speed: `make bench`)."""
    rng = np.random.default_rng(0)
    y = law("offset_power", X10, TRUTH["offset_power"]) * np.exp(rng.normal(0, 0.03, X10.size))
    r = fit(X10, y, "offset_power", n_boot=1000, extrapolate=False)
    assert r.n_boot >= 990


def test_seed_bootstrap():
    rng = np.random.default_rng(1)
    x = np.repeat(X10[:6], 3)
    y = law("offset_power", x, TRUTH["offset_power"]) * np.exp(rng.normal(0, 0.03, x.size))
    r = fit(x, y, "offset_power", n_boot=200)
    assert r.ci_seed is not None and set(r.ci_seed) == {"E", "A", "alpha"}
    assert r.n_points == 18


def test_chinchilla_2d_recovers_truth():
    rng = np.random.default_rng(0)
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 9, 5), np.logspace(5, 8, 5)))
    truth = dict(E=1.7, A=3.0, alpha=0.34, B=2.0, beta=0.28)
    y = truth["E"] + truth["A"] * (N / 1e8) ** -truth["alpha"] + truth["B"] * (D / 1e6) ** -truth["beta"]
    r = fit(np.c_[N, D], y * np.exp(rng.normal(0, 0.01, y.size)), "chinchilla", n_boot=300)
    assert r.converged
    for k, v in truth.items():
        assert r.ci[k][0] <= v <= r.ci[k][1], (k, v, r.ci[k])
    assert r.params["alpha"] == pytest.approx(0.34, abs=0.05)
    assert r.params["beta"] == pytest.approx(0.28, abs=0.05)
    assert "N/1e+08" in r.formula() and "D/1e+06" in r.formula()


@pytest.mark.parametrize("x,y,match", [
    ([1e15, 1e16, 1e17, 1e18], [3.0, 2.0, 0.0, 1.0], "non-positive"),
    ([1e15, 1e16, 1e17, 1e18], [3.0, 2.0, -1.0, 1.0], "non-positive"),
    ([-1.0, 1e16, 1e17, 1e18], [3.0, 2.0, 1.5, 1.0], "non-positive"),
    ([1e16] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], "same x"),
    ([1e15, 1e16, 1e17], [3.0, 2.0, 1.0], "3 distinct x .* need at least 4"),
    ([1e15, 1e15, 1e16, 1e16, 1e17], [3, 3.1, 2, 2.1, 1], "3 distinct x"),
    ([np.nan] * 4, [1.0, 2.0, 3.0, 4.0], "no finite points"),
])
def test_refusals(x, y, match):
    with pytest.raises(FitRefused, match=match):
        fit(x, y, "offset_power", n_boot=10)
    r = fit(x, y, "offset_power", n_boot=10, raise_on_refusal=False)
    assert r.refused and "\n" not in r.reason and not r.ok
    assert "refused" in r.formula()
    with pytest.raises(FitRefused):
        r.predict(1e16)


def test_refusal_2d_and_unknown_form():
    with pytest.raises(FitRefused, match="same D"):
        fit(np.c_[np.logspace(7, 9, 8), np.full(8, 1e6)], np.linspace(5, 2, 8), "chinchilla")
    with pytest.raises(FitRefused, match="unknown form 'cubic'"):
        fit(X10, np.ones(10), "cubic")


def test_nan_rows_are_dropped_and_counted():
    y = law("power", X10, TRUTH["power"])
    y[[2, 5]] = np.nan
    r = fit(X10, y, "power", n_boot=50)
    assert r.n_points == 8 and r.n_dropped == 2


@pytest.mark.parametrize("form", ["power", "offset_power"])
def test_negative_alpha_is_a_valid_answer(form):
    """A reconstruction-only AE gets worse with compute (VTP Fig. 1c): α < 0, no failure."""
    rng = np.random.default_rng(3)
    y = 55.0 * (X10 / 1e16) ** 0.02 * np.exp(rng.normal(0, 0.005, X10.size))
    r = fit(X10, y, form, n_boot=100, extrapolate=False)
    assert r.converged and not r.refused
    assert r.params["alpha"] < 0
    assert r.ci["alpha"][1] < 0.005
    flat = fit(X10, np.full(10, 40.0) * np.exp(rng.normal(0, 0.005, 10)), form, n_boot=50, extrapolate=False)
    assert flat.converged and abs(flat.params["alpha"]) < 0.05 or flat.params.get("A", 1) < 1


def test_extrapolation_check():
    y = law("offset_power", X10, TRUTH["offset_power"])
    ex = extrapolation_check(X10, y, "offset_power", n_boot=50)
    assert not ex.refused and ex.held_out_x == pytest.approx(1e18)
    assert ex.observed == pytest.approx(y[-1]) and abs(ex.rel_error) < 1e-3
    y2 = y.copy()
    y2[-1] *= 1.5                                      # the largest run is off the law
    ex2 = extrapolation_check(X10, y2, "offset_power", n_boot=50)
    assert ex2.rel_error == pytest.approx(1 / 1.5 - 1, abs=0.01) and not ex2.inside_ci
    assert ex.form == "offset_power"
    short = extrapolation_check(X10[:4], y[:4], "offset_power")  # 3 x left: too few for 3 parameters
    assert not short.refused and short.form == "power" and "power law" in str(short)
    shorter = extrapolation_check(X10[:3], y[:3], "offset_power")
    assert shorter.refused and "need at least 3" in shorter.reason
