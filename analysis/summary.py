"""``results/<study>/summary.md``: the headline numbers of a study, in a form the README quotes verbatim.

One job: turn the fits that ``report`` already made (gFID vs tokenizer FLOPs per recipe, the same
``FitResult`` objects the main scaling plot draws, ``analysis.table.fit_column``) into a short,
stable Markdown text, write it atomically, and read it back (``parse_summary``) so a test can check
that numbers quoted elsewhere match a summary made by this code.

Format (every line below is fixed text except the ``<…>`` fields; optional lines are marked)::

    **Scaling summary: <study>**

    - study: <study>
    - date: <YYYY-MM-DDTHH:MM:SSZ, UTC>
    - commit: <short hash>[-dirty] | unknown
    - cells: <done> done of <total>
    - wall time: <seconds> s (<hours> h), sum of <k> stage wall times      (only if the table has them)

    Exponent α of gFID vs tokenizer FLOPs (gFID = E + A·(FLOPs/x0)^-α, or A·(FLOPs/x0)^-α; α > 0: gFID falls with compute), <L>% bootstrap CI over cells:

    - <recipe>: exponent <α> (<L>% CI <lo> to <hi>), <n> cells, <form> law[, not converged]
    - <recipe>: no fit (<reason>)

    Held-out check (refit without the largest FLOPs and predict it; passed = observed inside the prediction's <L>% band):

    - <recipe>: passed|failed (held out <x> FLOPs: predicted <p>, <L>% CI <lo> to <hi>, observed <o>, error <±e>%)
    - <recipe>: refused (<reason>)

    Seed spread vs trend (gFID; spread: std over seeds at one budget, median over budgets; trend: the law's change from the smallest to the largest FLOPs measured):

    - <recipe>: seed spread <s> over <k> budgets, trend <t> (<t/s>x the spread)
    - <recipe>: seed spread unknown (<reason>)

    Interpretation: <one sentence>

Recipes are listed in sorted order. Exponents and their CIs are printed with 3 significant digits,
gFID values with 4, FLOPs as ``1.9e20``. ``nan`` stands for a missing number (e.g. no bootstrap).

The interpretation sentence is made by ``interpret`` from the *printed* numbers (what
``parse_summary`` returns), so it can be re-derived from the text: a recipe's trend is called
resolved only if its CI excludes 0 (and the fit converged), two recipes' exponents are called
different only if their CIs do not overlap (touching counts as overlap), and a failed or refused
held-out check is named as a limit on extrapolation. It never says more than that.

Wall time: summed over the columns ``wall_s`` (per cell) and ``<stage>_wall_s`` (per stage; a stage
shared by several cells, same ``<stage>_id``, counts once). The results table has none of these
today (docs/CONTRACTS.md), in which case the line is left out rather than invented.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fit import FitResult

X, Y = "tokenizer_flops", "gfid"
TITLE = "**Scaling summary: {study}**"
EXP_HEAD = ("Exponent α of gFID vs tokenizer FLOPs (gFID = E + A·(FLOPs/x0)^-α, or A·(FLOPs/x0)^-α; "
            "α > 0: gFID falls with compute), {pct}% bootstrap CI over cells:")
EXT_HEAD = ("Held-out check (refit without the largest FLOPs and predict it; "
            "passed = observed inside the prediction's {pct}% band):")
SPREAD_HEAD = ("Seed spread vs trend (gFID; spread: std over seeds at one budget, median over budgets; trend: the "
               "law's change from the smallest to the largest FLOPs measured):")
INTERP = "Interpretation: "

_NUM = r"[-+]?(?:nan|inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
_RE_FIELD = re.compile(r"^- (study|date|commit): (.*)$")
_RE_CELLS = re.compile(r"^- cells: (\d+) done of (\d+)$")
_RE_WALL = re.compile(rf"^- wall time: ({_NUM}) s \(({_NUM}) h\), sum of (\d+) stage wall times?$")
_RE_EXP = re.compile(rf"^- (.+?): exponent ({_NUM}) \((\d+)% CI ({_NUM}) to ({_NUM})\), (\d+) cells?, "
                     rf"(\w+) law(, not converged)?$")
_RE_NOFIT = re.compile(r"^- (.+?): no fit \((.*)\)$")
_RE_EXT = re.compile(rf"^- (.+?): (passed|failed) \(held out ({_NUM}) FLOPs: predicted ({_NUM}), (\d+)% CI "
                     rf"({_NUM}) to ({_NUM}), observed ({_NUM}), error ({_NUM})%\)$")
_RE_REFUSED = re.compile(r"^- (.+?): refused \((.*)\)$")
_RE_SPREAD = re.compile(rf"^- (.+?): seed spread ({_NUM}) over (\d+) budgets, trend (?:({_NUM}) \(|unknown)")


# ---------------------------------------------------------------- provenance

def git_commit(cwd=None) -> str:
    """Short hash of HEAD of the repository at ``cwd`` (default: the current directory), with
    ``-dirty`` when tracked files have changes; ``unknown`` when git or the repository is unavailable."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                            capture_output=True, text=True, timeout=30)
        if st.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("-dirty" if st.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wall_seconds(df: pd.DataFrame) -> tuple[float, int] | None:
    """(total seconds, number of stage times summed) from ``wall_s`` / ``<stage>_wall_s``; None if absent."""
    total, n = 0.0, 0
    for col in df.columns:
        m = re.fullmatch(r"(?:(\w+)_)?wall_s", str(col))
        if not m:
            continue
        vals = df[[col] + ([f"{m.group(1)}_id"] if m.group(1) and f"{m.group(1)}_id" in df.columns else [])]
        if vals.shape[1] == 2:
            vals = vals.drop_duplicates(subset=vals.columns[1])
        v = pd.to_numeric(vals[col], errors="coerce")
        v = v[np.isfinite(v)]
        total, n = total + float(v.sum()), n + len(v)
    return (total, n) if n else None


# ---------------------------------------------------------------- formatting

def _g(v, digits: int) -> str:
    v = float(v)
    return "nan" if math.isnan(v) else f"{v:.{digits}g}"


def _flops(v) -> str:
    return _g(v, 3).replace("e+", "e")


def _one_line(s) -> str:
    return " ".join(str(s).split())


def _exponent_line(name: str, f: FitResult) -> str:
    if f.refused or "alpha" not in f.params:
        return f"- {name}: no fit ({_one_line(f.reason or 'no exponent')})"
    lo, hi = f.ci.get("alpha", (float("nan"), float("nan")))
    pct = int(round(100 * f.level))
    nc = "" if f.converged else ", not converged"
    return (f"- {name}: exponent {_g(f.params['alpha'], 3)} ({pct}% CI {_g(lo, 3)} to {_g(hi, 3)}), "
            f"{f.n_points} cell{'s' if f.n_points != 1 else ''}, {f.form} law{nc}")


def _extrapolation_line(name: str, f: FitResult) -> str:
    ex = f.extrapolation
    if f.refused:
        return f"- {name}: refused (no law to check: {_one_line(f.reason)})"
    if ex is None:
        return f"- {name}: refused (check not run)"
    if ex.refused:
        return f"- {name}: refused ({_one_line(ex.reason)})"
    if not all(math.isfinite(v) for v in ex.ci):
        return f"- {name}: refused (no bootstrap band for the held-out prediction)"
    pct = int(round(100 * f.level))
    return (f"- {name}: {'passed' if ex.inside_ci else 'failed'} (held out {_flops(ex.held_out_x)} FLOPs: "
            f"predicted {_g(ex.predicted, 4)}, {pct}% CI {_g(ex.ci[0], 4)} to {_g(ex.ci[1], 4)}, "
            f"observed {_g(ex.observed, 4)}, error {100 * ex.rel_error:+.1f}%)")


def _names(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# ---------------------------------------------------------------- interpretation

def interpret(recipes: dict[str, dict], extrapolation: dict[str, dict] | None = None) -> str:
    """One sentence from the printed numbers (``parse_summary(...)["recipes"]``, ``["extrapolation"]``).

    Claims only what the intervals support: "falls"/"rises" when the exponent CI excludes 0,
    "not resolved" when it contains 0 (or the fit did not converge, or there is no CI); one recipe's
    exponent "larger" than another's only when the CIs do not overlap, else "not resolved".
    """
    falls, rises, unres, nofit, comparable = [], [], {}, [], []
    for name in sorted(recipes):
        r = recipes[name]
        if r.get("exponent") is None:
            nofit.append(name)
            continue
        lo, hi = r["ci"]
        if not r.get("converged", True):
            unres.setdefault("the fit did not converge", []).append(name)
            continue
        if math.isnan(lo) or math.isnan(hi):
            unres.setdefault("no bootstrap CI", []).append(name)
            continue
        comparable.append(name)
        if lo > 0:
            falls.append(name)
        elif hi < 0:
            rises.append(name)
        else:
            unres.setdefault("exponent CI contains 0", []).append(name)
    clauses = []
    if falls:
        clauses.append(f"gFID falls with tokenizer FLOPs for {_names(falls)} "
                       f"(exponent CI{'s' if len(falls) > 1 else ''} above 0)")
    if rises:
        clauses.append(f"gFID rises with tokenizer FLOPs for {_names(rises)} "
                       f"(exponent CI{'s' if len(rises) > 1 else ''} below 0)")
    for why, names in unres.items():
        clauses.append(f"the trend is not resolved for {_names(names)} ({why})")
    if nofit:
        clauses.append(f"no law could be fitted for {_names(nofit)}")
    same, apart = [], []
    for i, a in enumerate(comparable):
        for b in comparable[i + 1:]:
            (alo, ahi), (blo, bhi) = recipes[a]["ci"], recipes[b]["ci"]
            if alo <= bhi and blo <= ahi:
                same.append(f"{a} and {b}")
            else:
                big, small = (a, b) if alo > bhi else (b, a)
                apart.append(f"{big}'s exponent is larger than {small}'s")
    if len(same) == 1:
        clauses.append(f"the difference between the exponents of {same[0]} is not resolved (their CIs overlap)")
    elif same:
        clauses.append("the differences between the exponents of " + ", of ".join(same[:-1]) + ", and of "
                       + same[-1] + " are not resolved (their CIs overlap)")
    if apart:
        clauses.append(", ".join(apart) + " (CIs do not overlap)")
    ext = extrapolation or {}
    failed = sorted(k for k, v in ext.items() if v.get("result") == "failed")
    refused = sorted(k for k, v in ext.items()
                     if v.get("result") == "refused" and recipes.get(k, {}).get("exponent") is not None)
    if failed:
        clauses.append(f"the held-out check failed for {_names(failed)}, so extrapolating "
                       f"{'its law' if len(failed) == 1 else 'their laws'} beyond the data is not supported")
    if refused:
        clauses.append(f"extrapolation is untested for {_names(refused)} (held-out check refused)")
    if not clauses:
        return "No recipe has finished cells with gFID yet, so no trend is resolved."
    text = "; ".join(clauses)
    if text.startswith(("the ", "no ", "extrapolation ")):     # never recapitalise gFID or a recipe name
        text = text[0].upper() + text[1:]
    return text + "."


# ---------------------------------------------------------------- render / write / parse

def _spread_line(recipe: str, df: pd.DataFrame, fit: FitResult) -> str:
    """Is the trend bigger than the noise? The seeds' std of gFID at each budget (done rows of the recipe, two
    seeds or more), its median over budgets, against the fitted law's change over the measured FLOPs."""
    if not {"budget_flops", "recipe", "status", Y} <= set(df.columns):
        return f"- {recipe}: seed spread unknown (the table has no budget_flops)"
    rows = df[(df["recipe"].astype(str) == recipe) & (df["status"] == "done")]
    stds = rows.groupby("budget_flops")[Y].agg(lambda v: v.dropna().std(ddof=1) if v.notna().sum() >= 2 else np.nan)
    stds = stds.dropna()
    if not len(stds):
        return f"- {recipe}: seed spread unknown (no budget with two seeds done)"
    spread = float(np.median(stds))
    if not fit.ok:
        return f"- {recipe}: seed spread {_g(spread, 4)} over {len(stds)} budgets, trend unknown (no usable law)"
    lo, hi = fit.x_range
    trend = float(fit.predict(lo)) - float(fit.predict(hi))
    times = trend / spread if spread > 0 else math.inf
    return f"- {recipe}: seed spread {_g(spread, 4)} over {len(stds)} budgets, trend {_g(trend, 4)} ({times:.2g}x the spread)"


def render_summary(df: pd.DataFrame, study: str, fits: dict[str, FitResult], *, commit: str | None = None,
                   now: _dt.datetime | None = None) -> str:
    """The Markdown text (see the module docstring). ``df``: the study's rows; ``fits``: recipe → the
    gFID-vs-tokenizer-FLOPs fit (as ``plots.plot_scaling(...).fits``); ``commit``: default ``git_commit()``."""
    now = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    commit = _one_line(commit) if commit else git_commit()
    done = int((df["status"] == "done").sum())
    levels = {int(round(100 * f.level)) for f in fits.values() if not f.refused} or {95}
    pct = max(levels)
    lines = [TITLE.format(study=study), "",
             f"- study: {study}",
             f"- date: {now.strftime('%Y-%m-%dT%H:%M:%SZ')}",
             f"- commit: {commit}",
             f"- cells: {done} done of {len(df)}"]
    wall = wall_seconds(df)
    if wall is not None:
        secs, k = wall
        lines.append(f"- wall time: {secs:.0f} s ({secs / 3600:.3g} h), sum of {k} stage wall time{'s' if k != 1 else ''}")
    exp_lines = [_exponent_line(g, fits[g]) for g in sorted(fits)]
    ext_lines = [_extrapolation_line(g, fits[g]) for g in sorted(fits)]
    lines += ["", EXP_HEAD.format(pct=pct), ""] + (exp_lines or ["- (no recipe)"])
    lines += ["", EXT_HEAD.format(pct=pct), ""] + (ext_lines or ["- (no recipe)"])
    lines += ["", SPREAD_HEAD, ""] + ([_spread_line(g, df, fits[g]) for g in sorted(fits)] or ["- (no recipe)"])
    parsed = parse_summary("\n".join(lines))
    lines += ["", INTERP + interpret(parsed["recipes"], parsed["extrapolation"])]
    return "\n".join(lines) + "\n"


def write_summary(df: pd.DataFrame, study: str, out_dir, fits: dict[str, FitResult] | None = None, *,
                  commit: str | None = None, now: _dt.datetime | None = None, n_boot: int = 1000,
                  seed: int = 0) -> tuple[Path, str]:
    """Write ``out_dir/summary.md`` atomically (temp file + ``os.replace``); return (path, text).

    ``fits`` should be the report's own (``plot_scaling(df, "tokenizer_flops", "gfid").fits``); when
    None they are made the same way (``fit_column`` per recipe on the dominant gFID protocol's rows)."""
    if fits is None:
        from analysis.table import fit_column, protocol_rows

        rows, _, _ = protocol_rows(df, Y)
        fits = {str(g): fit_column(rows[rows["recipe"].astype(str) == str(g)], X, Y, n_boot=n_boot, seed=seed)
                for g in sorted(map(str, rows["recipe"].dropna().unique()))}
    text = render_summary(df, study, fits, commit=commit, now=now)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.md"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".summary.", suffix=".md.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, text


def parse_summary(text: str) -> dict:
    """Read a summary back. Returns::

        {"study": str, "date": str, "commit": str, "cells_done": int, "cells_total": int,
         "wall_time_s": float | None, "wall_time_h": float | None,
         "recipes": {recipe: {"exponent": float, "ci": (lo, hi), "level": 0.95, "cells": int,
                              "law": str, "converged": bool}
                     | {"exponent": None, "reason": str}},
         "extrapolation": {recipe: {"result": "passed" | "failed", "held_out_x": float, "predicted": float,
                                    "ci": (lo, hi), "level": 0.95, "observed": float, "rel_error": float}
                           | {"result": "refused", "reason": str}},
         "spread": {recipe: {"spread": float, "budgets": int, "trend": float | None}},
         "interpretation": str | None}

    Missing fields are None (recipes/extrapolation empty). Numbers are the printed ones.
    """
    out: dict = {"study": None, "date": None, "commit": None, "cells_done": None, "cells_total": None,
                 "wall_time_s": None, "wall_time_h": None, "recipes": {}, "extrapolation": {}, "spread": {},
                 "interpretation": None}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Exponent α of gFID"):
            section = "exp"
        elif line.startswith("Held-out check"):
            section = "ext"
        elif line.startswith("Seed spread vs trend"):
            section = "spread"
        elif line.startswith(INTERP):
            out["interpretation"] = line[len(INTERP):]
            section = None
        elif not line.startswith("- "):
            continue
        elif section is None:
            if m := _RE_FIELD.match(line):
                out[m.group(1)] = m.group(2)
            elif m := _RE_CELLS.match(line):
                out["cells_done"], out["cells_total"] = int(m.group(1)), int(m.group(2))
            elif m := _RE_WALL.match(line):
                out["wall_time_s"], out["wall_time_h"] = float(m.group(1)), float(m.group(2))
        elif section == "exp":
            if m := _RE_EXP.match(line):
                out["recipes"][m.group(1)] = {
                    "exponent": float(m.group(2)), "ci": (float(m.group(4)), float(m.group(5))),
                    "level": int(m.group(3)) / 100, "cells": int(m.group(6)), "law": m.group(7),
                    "converged": m.group(8) is None}
            elif m := _RE_NOFIT.match(line):
                out["recipes"][m.group(1)] = {"exponent": None, "reason": m.group(2)}
        elif section == "ext":
            if m := _RE_EXT.match(line):
                out["extrapolation"][m.group(1)] = {
                    "result": m.group(2), "held_out_x": float(m.group(3)), "predicted": float(m.group(4)),
                    "level": int(m.group(5)) / 100, "ci": (float(m.group(6)), float(m.group(7))),
                    "observed": float(m.group(8)), "rel_error": float(m.group(9)) / 100}
            elif m := _RE_REFUSED.match(line):
                out["extrapolation"][m.group(1)] = {"result": "refused", "reason": m.group(2)}
        elif section == "spread" and (m := _RE_SPREAD.match(line)):
            out["spread"][m.group(1)] = {"spread": float(m.group(2)), "budgets": int(m.group(3)),
                                         "trend": float(m.group(4)) if m.group(4) else None}
    return out


BEGIN, END = "<!-- summary:begin (written by `python -m analysis quote`) -->", "<!-- summary:end -->"


def quoted(text: str) -> str | None:
    """The summary quoted in a document between BEGIN and END, or None."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def quote_into(doc_path, summary_text: str) -> None:
    """Replace the block between BEGIN and END of `doc_path` (e.g. README.md) with `summary_text`, atomically."""
    path = Path(doc_path)
    text = path.read_text()
    if quoted(text) is None:
        raise ValueError(f"{path}: no {BEGIN} ... {END} block to quote the summary into")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{BEGIN}\n{summary_text.strip()}\n{END}{tail}"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.replace(tmp, path)
