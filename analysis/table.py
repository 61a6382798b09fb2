"""Reading the results table and choosing which rows may share a curve.

The table is the only input of ``analysis`` (docs/CONTRACTS.md "Results table"). Rules kept here so
plots, reports and comparisons apply the same ones:

* only ``status == "done"`` rows with a finite metric are fitted; every other row is reported
  (failed / diverged / pending / running, with its reason), never silently dropped;
* numbers made under different metric protocols never share a curve: the dominant protocol
  (most rows) is kept and the number of excluded rows is returned;
* anchor rows (released tokenizers, ``anchor`` column non-empty) are never fitted: ``done_points``, which
  every fit reads, leaves them out; plots draw them as labelled points beside the curves.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.fit import FitResult, fit

REQUIRED = ("study", "cell", "recipe", "status")
PROTOCOL_OF = {"gfid": "gfid_protocol", "rfid": "rfid_protocol", "sfid": "sfid_protocol",
               "inception_score": "inception_score_protocol", "precision": "precision_protocol",
               "recall": "recall_protocol", "fd_dinov2": "fd_dinov2_protocol"}
SCALING_AXES = ("tokenizer_flops", "budget_flops", "encoder_params", "data_size", "dit_flops", "tokenizer_steps")
LOG_METRICS = ("gfid", "rfid", "sfid", "fd_dinov2")
EXTRA_METRICS = ("sfid", "inception_score", "precision", "recall", "fd_dinov2")  # the fid stage's other metrics
NOT_DONE = ("failed", "diverged", "pending", "running", "preempted", "stale")


class TableError(ValueError):
    """Bad input table; ``str(err)`` is one line naming the file/column/value."""


def load_table(path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such results table (expected results/<study>/runs.parquet or .csv)")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as e:  # noqa: BLE001 - any reader error becomes one line
        raise TableError(f"{p}: cannot read table ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    check_table(df, str(p))
    return df


def check_table(df: pd.DataFrame, name: str = "table") -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TableError(f"{name}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")


def protocol_rows(df: pd.DataFrame, *cols: str) -> tuple[pd.DataFrame, dict[str, str | None], int]:
    """Keep rows whose metric protocols equal the dominant ones (for each of ``cols`` that has one).

    Rows without a value of the metric are kept (they are shown as missing/failed). Returns
    (rows kept, {metric: protocol hash}, number of rows with a value excluded).
    """
    keep = pd.Series(True, index=df.index)
    protos: dict[str, str | None] = {}
    for c in cols:
        pc = PROTOCOL_OF.get(c)
        if pc is None or pc not in df.columns or c not in df.columns:
            continue
        has = df[c].notna()
        counts = df.loc[has, pc].fillna("<none>").value_counts()
        if counts.empty:
            protos[c] = None
            continue
        dom = counts.index[0]
        protos[c] = None if dom == "<none>" else str(dom)
        keep &= ~has | (df[pc].fillna("<none>") == dom)
    return df[keep], protos, int((~keep).sum())


def is_anchor(df: pd.DataFrame) -> pd.Series:
    """True for the rows of released tokenizers (tables written before anchors existed have none)."""
    if "anchor" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["anchor"].fillna("").astype(str) != ""


def split_anchors(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trained rows, anchor rows)."""
    a = is_anchor(df)
    return df[~a], df[a]


def done_points(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows a law may be fitted on: done, both values present, not an anchor."""
    ok = (df["status"] == "done") & df[x].notna() & df[y].notna() & ~is_anchor(df)
    return df[ok]


def fit_column(df: pd.DataFrame, x: str, y: str, *, form: str = "auto", n_boot: int = 1000,
               seed: int = 0, at=None) -> FitResult:
    """Fit y(x) on done rows. ``form="auto"``: offset_power, or power when too few x for three parameters."""
    pts = done_points(df, x, y)
    forms = ("offset_power", "power") if form == "auto" else (form,)
    res = None
    for f in forms:
        res = fit(pts[x].to_numpy(float), pts[y].to_numpy(float), f, n_boot=n_boot, seed=seed, at=at,
                  raise_on_refusal=False, x_name=x, y_name=y)
        if not res.refused:
            if f != forms[0]:
                res.warnings.append(f"too few points for {forms[0]}; fitted {f}")
            break
    return res


def fit_groups(df: pd.DataFrame, x: str, y: str, group: str = "recipe", **kw) -> dict[str, FitResult]:
    return {str(g): fit_column(sub, x, y, **kw) for g, sub in df.groupby(group, sort=True)}


def problems(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are not done (or done without gFID), with status and reason, for reports."""
    bad = (df["status"] != "done")
    if "gfid" in df.columns:
        bad |= df["gfid"].isna()
    cols = [c for c in ("cell", "recipe", "encoder", "data_size", "budget_flops", "seed", "status", "reason")
            if c in df.columns]
    out = df.loc[bad, cols].copy()
    if "reason" not in out.columns:
        out["reason"] = None
    out.loc[(out["status"] == "done") & out["reason"].isna(), "reason"] = "done, but gfid missing"
    return out
