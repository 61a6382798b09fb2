"""analysis.summary: `make report` writes summary.md; its numbers are the report's fits and read back."""
from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.cli import main
from analysis.fit import Extrapolation, FitResult
from analysis.summary import git_commit, interpret, parse_summary, render_summary, wall_seconds, write_summary
from analysis.table import fit_column

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)


def _law(alpha, lo, hi, n=6, converged=True, ex=None) -> FitResult:
    return FitResult(form="power", params={"A": 50.0, "alpha": alpha}, ci={"A": (40.0, 60.0), "alpha": (lo, hi)},
                     n_points=n, converged=converged, extrapolation=ex)


def _rows() -> pd.DataFrame:
    return pd.DataFrame({"study": ["s"] * 3, "cell": list("xyz"), "recipe": ["a"] * 3,
                         "status": ["done", "done", "failed"]})


def test_make_report_writes_summary(table, tmp_path):
    """The `make report` code path (python -m analysis report) writes summary.md with every field,
    from the same fits as the main figure, atomically, and shows it in report.html."""
    tp = tmp_path / "runs.parquet"
    table.to_parquet(tp)
    out = tmp_path / "fixture"
    assert main(["report", "--table", str(tp), "--out", str(out), "--n-boot", "100", "--commit", "abc1234"]) == 0
    text = (out / "summary.md").read_text()
    assert sorted(p.name for p in out.iterdir() if "summary" in p.name) == ["summary.md"]   # no temp file left
    s = parse_summary(text)
    assert s["study"] == "fixture" and s["commit"] == "abc1234"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["date"])
    assert (s["cells_done"], s["cells_total"]) == (17, 20)
    assert s["wall_time_s"] is None and "wall time" not in text          # the fixture has no wall-time column
    assert set(s["recipes"]) == {"ae", "vtp"} == set(s["extrapolation"])
    main_fits = plots.plot_scaling(table, out_stem=tmp_path / "again", n_boot=100).fits
    for g, f in main_fits.items():
        r = s["recipes"][g]
        assert r["exponent"] == pytest.approx(f.params["alpha"], rel=5e-3)
        assert r["ci"] == pytest.approx(f.ci["alpha"], rel=5e-3)
        assert r["cells"] == f.n_points == 8 and r["law"] == f.form and r["converged"]
        e = s["extrapolation"][g]
        assert e["result"] == ("passed" if f.extrapolation.inside_ci else "failed")
        assert e["predicted"] == pytest.approx(f.extrapolation.predicted, rel=1e-3)
    assert s["extrapolation"]["vtp"]["result"] == "passed" and s["extrapolation"]["ae"]["result"] == "failed"
    sentence = s["interpretation"]
    assert sentence.count(".") == 1 and sentence.endswith(".")           # one sentence
    assert "falls with tokenizer FLOPs for vtp" in sentence and "rises with tokenizer FLOPs for ae" in sentence
    assert "held-out check failed for ae" in sentence
    html = (out / "report.html").read_text()
    assert 'id=summary-md' in html and "exponent" in html.split("id=summary-md", 1)[1]


def test_parse_summary_round_trip(table, tmp_path):
    fits = {g: fit_column(table[table.recipe == g], "tokenizer_flops", "gfid", n_boot=100) for g in ("ae", "vtp")}
    fits["clip"] = fit_column(table.iloc[:2], "tokenizer_flops", "gfid", n_boot=100)       # too few x: refused
    fits["vtp"].extrapolation = Extrapolation(held_out_x=1e20, refused=True, reason="without the largest x: no")
    t = table.copy()
    t["pretrain_wall_s"] = 100.0
    t["dit_wall_s"] = 50.0
    t["pretrain_id"] = [f"pretrain-{i}" for i in range(len(t))]
    t.loc[t.index[:2], "pretrain_id"] = "shared-pretrain"                 # one stage shared by two cells: once
    text = render_summary(t, "fixture", fits, commit="deadbee-dirty", now=NOW)
    s = parse_summary(text)
    assert (s["study"], s["date"], s["commit"]) == ("fixture", "2025-03-04T05:06:07Z", "deadbee-dirty")
    assert s["wall_time_s"] == (len(t) - 1) * 100 + len(t) * 50 and wall_seconds(t) == (s["wall_time_s"], 2 * len(t) - 1)
    assert s["wall_time_h"] == pytest.approx(s["wall_time_s"] / 3600, rel=1e-2)
    for g in ("ae", "vtp"):
        f, r = fits[g], s["recipes"][g]
        assert r["exponent"] == float(f"{f.params['alpha']:.3g}")
        assert r["ci"] == tuple(float(f"{v:.3g}") for v in f.ci["alpha"]) and r["level"] == 0.95
    ex = fits["ae"].extrapolation
    e = s["extrapolation"]["ae"]
    assert (e["held_out_x"], e["observed"], e["ci"]) == (float(f"{ex.held_out_x:.3g}"), float(f"{ex.observed:.4g}"),
                                                         tuple(float(f"{v:.4g}") for v in ex.ci))
    assert e["rel_error"] == pytest.approx(ex.rel_error, abs=6e-4)
    assert s["recipes"]["clip"]["exponent"] is None and "distinct x" in s["recipes"]["clip"]["reason"]
    assert s["extrapolation"]["vtp"] == {"result": "refused", "reason": "without the largest x: no"}
    assert s["extrapolation"]["clip"]["result"] == "refused"
    # the sentence is re-derivable from the printed numbers alone
    assert s["interpretation"] == interpret(s["recipes"], s["extrapolation"])
    assert "no law could be fitted for clip" in s["interpretation"]
    assert "extrapolation is untested for vtp" in s["interpretation"]
    # write_summary: the file holds the text; without fits it makes them as the report does
    path, written = write_summary(table, "fixture", tmp_path, fits=None, commit="x", now=NOW, n_boot=100)
    assert path == tmp_path / "summary.md" and path.read_text() == written
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    main_fits = plots.plot_scaling(table, out_stem=tmp_path / "fig" / "main", n_boot=100).fits
    assert parse_summary(written)["recipes"]["vtp"]["ci"] == tuple(float(f"{v:.3g}") for v in main_fits["vtp"].ci["alpha"])


@pytest.mark.parametrize("a,b,must,must_not", [
    ((0.30, 0.10, 0.50), (0.40, 0.20, 0.60), ["difference between the exponents of a and b is not resolved"],
     ["larger"]),                                                                 # CIs overlap
    ((0.30, 0.10, 0.50), (0.80, 0.50, 1.10), ["not resolved"], ["larger"]),        # CIs touch: still overlap
    ((0.30, 0.10, 0.40), (0.80, 0.50, 1.10), ["b's exponent is larger than a's (CIs do not overlap)"],
     ["not resolved"]),
    ((0.05, -0.02, 0.12), (0.80, 0.50, 1.10), ["the trend is not resolved for a (exponent CI contains 0)",
                                               "gFID falls with tokenizer FLOPs for b"], ["falls with tokenizer FLOPs for a"]),
])
def test_interpretation_never_claims_more_than_the_intervals(a, b, must, must_not):
    fits = {"a": _law(*a), "b": _law(*b)}
    text = render_summary(_rows(), "s", fits, commit="c", now=NOW)
    sentence = parse_summary(text)["interpretation"]
    for m in must:
        assert m in sentence, sentence
    for m in must_not:
        assert m not in sentence, sentence
    assert sentence.count(".") <= 5 and sentence.endswith(".") and "\n" not in sentence


def test_interpretation_edge_cases():
    r = {"a": {"exponent": 0.2, "ci": (0.1, 0.3), "converged": False},
         "b": {"exponent": 0.2, "ci": (math.nan, math.nan), "converged": True},
         "c": {"exponent": None, "reason": "refused"}}
    s = interpret(r)
    assert "not resolved for a (the fit did not converge)" in s and "not resolved for b (no bootstrap CI)" in s
    assert "falls" not in s and "larger" not in s and s.startswith("The trend")
    assert interpret({}) == "No recipe has finished cells with gFID yet, so no trend is resolved."
    three = {k: {"exponent": 0.3, "ci": (0.1, 0.5), "converged": True} for k in "xyz"}
    assert "differences between the exponents of x and y, of x and z, and of y and z are not resolved" in interpret(three)
    ex_fail = Extrapolation(held_out_x=1e20, predicted=30.0, observed=40.0, rel_error=-0.25, ci=(28.0, 32.0))
    text = render_summary(_rows(), "s", {"a": _law(0.5, 0.2, 0.8, ex=ex_fail)}, commit="c", now=NOW)
    assert "- a: failed (held out 1e20 FLOPs: predicted 30, 95% CI 28 to 32, observed 40, error -25.0%)" in text
    assert "held-out check failed for a" in parse_summary(text)["interpretation"]


def test_interpretation_on_fitted_twin_recipes(table):
    """End to end on data: two recipes that follow one law up to ±3% noise → exponents not resolved."""
    t = table[(table.recipe == "vtp") & (table.status == "done") & (table.gfid_protocol == "gfid0a1b2c")]
    twin = t.assign(recipe="vtp_twin", gfid=t.gfid * np.array([1.03, 0.98, 1.02, 0.99, 1.01, 0.97, 1.02, 1.0]))
    both = pd.concat([t, twin])
    fits = {g: fit_column(both[both.recipe == g], "tokenizer_flops", "gfid", n_boot=100) for g in ("vtp", "vtp_twin")}
    s = parse_summary(render_summary(both, "s", fits, commit="c", now=NOW))
    assert "difference between the exponents of vtp and vtp_twin is not resolved" in s["interpretation"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit(tmp_path):
    assert git_commit(tmp_path) == "unknown"                               # not a repository
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, env={**os.environ, **env})

    git("init", "-q")
    assert git_commit(tmp_path) == "unknown"                               # no commit yet
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "x")
    short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                           text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("u")                           # untracked files do not make it dirty
    assert git_commit(tmp_path) == short
    (tmp_path / "f.txt").write_text("2")
    assert git_commit(tmp_path) == short + "-dirty"


def test_seed_spread_against_the_trend(table, tmp_path):
    """The summary says whether the trend is bigger than the noise: per recipe, the seeds' std of gFID at each
    budget (median over budgets) and the law's change over the measured FLOPs, and reads both back."""
    rows = table[table.status == "done"].copy()
    text = write_summary(rows, "fixture", tmp_path, n_boot=50, commit="abc1234", now=NOW)[1]
    spread = parse_summary(text)["spread"]
    for recipe, fitted in parse_summary(text)["recipes"].items():
        sub = rows[rows.recipe == recipe]
        per_budget = sub.groupby("budget_flops")["gfid"].std(ddof=1).dropna()
        if not len(per_budget):
            assert recipe not in spread or spread[recipe]["budgets"] == 0
            continue
        assert spread[recipe]["spread"] == pytest.approx(float(np.median(per_budget)), rel=1e-3)
        assert spread[recipe]["budgets"] == len(per_budget)
        if fitted.get("exponent") is not None:
            assert spread[recipe]["trend"] is not None
