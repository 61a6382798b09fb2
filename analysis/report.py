"""``report.html`` for one study: what was run, what the laws say, and how far to trust them.

The page references the PNGs written next to it (SVGs sit beside them too), so the folder
``results/<study>/`` is the unit to copy. It is made on partial tables as well: unfinished, failed and
diverged cells are listed with their reasons and a "provisional" banner says the numbers may move.
``summary.md`` (``analysis.summary``: the headline numbers the README quotes) is written beside it
from the same fits, and shown on the page.
"""
from __future__ import annotations

import datetime as _dt
import html
from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, summary
from analysis.compare import CompareError, compare_recipes
from analysis.fit import FitResult
from analysis.table import EXTRA_METRICS, check_table, problems, protocol_rows, split_anchors

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;background:#fff}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left} th{background:#f3f3f3} .banner{background:#fff3cd;border:1px solid #e0b84c;padding:.7em 1em;
font-weight:600;margin:1em 0} .ok{color:#1a7f37} .bad{color:#b42318} figure{margin:1em 0}
img{max-width:100%;border:1px solid #eee} figcaption{font-size:12px;color:#555} code{font-size:12px}
.muted{color:#666;font-size:12px} pre.summary{background:#f7f7f7;border:1px solid #ddd;padding:.7em 1em;
white-space:pre-wrap;font-size:13px} .pair{display:flex;gap:1em} .pair figure{flex:1;min-width:0}
"""


def _e(x) -> str:
    return html.escape("" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="–", border=0, escape=True, float_format=lambda v: f"{v:.4g}")


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r, sub in df.groupby("recipe", sort=True):
        st = sub["status"].value_counts()
        done = sub[(sub["status"] == "done")]
        row = {"recipe": r, "cells": len(sub), "done": int(st.get("done", 0)),
               "failed": int(st.get("failed", 0)), "diverged": int(st.get("diverged", 0)),
               "not run yet": int(len(sub) - st.get("done", 0) - st.get("failed", 0) - st.get("diverged", 0))}
        for col, best in (("gfid", "min"), ("rfid", "min"), ("linear_probe", "max")):
            if col in sub.columns:
                row[f"best {col}"] = getattr(done[col], best)() if done[col].notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fit_rows(fits: dict[str, FitResult]) -> str:
    out = ["<table><tr><th>recipe</th><th>law</th><th>parameters (95% CI)</th><th>n</th>"
           "<th>converged</th><th>held-out largest x</th><th>notes</th></tr>"]
    for g, f in fits.items():
        if f.refused:
            out.append(f"<tr><td>{_e(g)}</td><td colspan=6 class=bad>refused: {_e(f.reason)}</td></tr>")
            continue
        pct = int(round(100 * f.level))
        ps = "<br>".join(f"{_e(k)} = {v:.4g} [{f.ci.get(k, (np.nan,))[0]:.4g}, {f.ci.get(k, (0, np.nan))[1]:.4g}]"
                         for k, v in f.params.items())
        conv = "<span class=ok>yes</span>" if f.converged else "<span class=bad>NO</span>"
        ex = f.extrapolation
        ex_txt = _e(str(ex)) if ex is not None else "–"
        if ex is not None and not ex.refused and not ex.inside_ci:
            ex_txt = f"<span class=bad>{ex_txt} (outside the {pct}% band)</span>"
        notes = "<br>".join(_e(w) for w in f.warnings) or "–"
        out.append(f"<tr><td>{_e(g)}</td><td><code>{_e(f.formula())}</code></td><td>{ps}</td>"
                   f"<td>{f.n_points}</td><td>{conv}</td><td>{ex_txt}</td><td>{notes}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _varies(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool((df.groupby("recipe")[col].nunique() > 1).any())


def write_report(df: pd.DataFrame, study: str, out_dir, provenance: dict | None = None, *,
                 n_boot: int = 1000, seed: int = 0, commit: str | None = None,
                 now: _dt.datetime | None = None) -> Path:
    """Write ``out_dir/report.html`` (+ the PNG/SVG figures it shows) and ``out_dir/summary.md``
    (``analysis.summary``, from the same fits as the main figure; ``commit`` defaults to
    ``summary.git_commit()``, ``now`` to the current UTC time) and return the report's path."""
    check_table(df, f"study {study}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    provenance = dict(provenance or {})
    df = df[df["study"].astype(str) == str(study)] if (df["study"].astype(str) == str(study)).any() else df
    df, anchors = split_anchors(df)  # released tokenizers: labelled points in the figures, in no fit or summary

    figs: list[tuple[str, plots.Figure]] = []
    main = plots.plot_scaling(df, "tokenizer_flops", "gfid", out_stem=out / "gfid_vs_tokenizer_flops", n_boot=n_boot,
                              anchors=anchors)
    figs.append(("gFID vs tokenizer pre-training compute", main))
    if "fd_dinov2" in df.columns and df["fd_dinov2"].notna().any():  # shown beside gFID: where Inception saturates
        figs.append(("FD-DINOv2 vs tokenizer pre-training compute",
                     plots.plot_scaling(df, "tokenizer_flops", "fd_dinov2", out_stem=out / "fd_dinov2_vs_tokenizer_flops",
                                        n_boot=n_boot)))
    fits = main.fits
    for col, title in (("encoder_params", "gFID vs encoder parameters"), ("data_size", "gFID vs pre-training data")):
        if _varies(df, col):
            figs.append((title, plots.plot_vs(df, col, "gfid", out_stem=out / f"gfid_vs_{col}", n_boot=n_boot,
                                              anchors=anchors)))
    for col, title in (("linear_probe", "understanding vs generation"), ("rfid", "reconstruction vs generation")):
        if col in df.columns and df[col].notna().any():
            figs.append((title, plots.plot_vs(df, col, "gfid", out_stem=out / f"gfid_vs_{col}", anchors=anchors)))
    if df["recipe"].nunique() > 1:
        figs.append(("recipes at equal tokenizer compute",
                     plots.plot_recipes_at_equal_flops(df, out_stem=out / "gfid_recipes_at_equal_flops", fits=fits)))

    _, protos, n_excl = protocol_rows(df, "gfid", "rfid")
    bad = problems(df)
    provisional = len(bad) > 0
    sentences = []
    for a, b in permutations(sorted(k for k, f in fits.items() if f.ok), 2):
        try:
            sentences.append(compare_recipes(df, a, b, fits=fits).sentence())
        except CompareError as e:
            sentences.append(f"{a} vs {b}: {e}")

    now_dt = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    _, summary_md = summary.write_summary(df, study, out, fits, commit=commit, now=now_dt)
    now = now_dt.strftime("%Y-%m-%d %H:%M UTC")
    prov = {"study": study, "generated": now, **provenance,
            "gfid protocol": protos.get("gfid") or "unrecorded", "rfid protocol": protos.get("rfid") or "unrecorded",
            **{f"{m} protocol": p for m, p in protocol_rows(df, *EXTRA_METRICS)[1].items() if p},
            "rows left out (other protocols)": n_excl}
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(study)}: VTP scaling report</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(study)}</h1><p class=muted>VTP tokenizer scaling study · generated {_e(now)}</p>"]
    if provisional:
        parts.append(f"<div class=banner id=provisional>PROVISIONAL: {len(bad)} of {len(df)} cells are not done "
                     "(or have no gFID). Laws are fitted on finished cells only and may move.</div>")
    parts += ["<h2>Summary</h2>", _table(_summary(df)),
              "<p class=muted>Headline numbers, as written to <a href=\"summary.md\">summary.md</a> "
              "(the text the README quotes):</p>",
              f"<pre class=summary id=summary-md>{_e(summary_md)}</pre>",
              "<h2>Fitted laws</h2>",
              "<p class=muted>Fitted in log space, sum of Huber(δ=1e-3) losses, L-BFGS-B from a start grid; "
              f"95% percentile intervals from {n_boot} bootstrap resamples over cells; "
              "the held-out check refits without the largest compute and predicts it.</p>",
              _fit_rows(fits)]
    if len(anchors):
        cols = [c for c in ("anchor", "encoder", "encoder_params", "gfid", "gfid_protocol", "rfid", "linear_probe",
                            "zero_shot", "status") if c in anchors.columns]
        parts += ["<h2>Released tokenizers (anchors)</h2>",
                  "<p class=muted>Run through the same downstream stages; drawn as labelled points, never fitted.</p>",
                  _table(anchors[cols])]
    if sentences:
        parts += ["<h2>Recipe comparison</h2><ul>"] + [f"<li>{_e(s)}</li>" for s in sentences] + ["</ul>"]
    parts.append("<h2>Figures</h2>")
    blocks = [f"<figure><img src=\"{_e(fig.paths[0].name)}\" alt=\"{_e(title)}\"><figcaption>{_e(title)} · "
              f"{_e(fig.caption)} · <a href=\"{_e(fig.paths[1].name)}\">SVG</a></figcaption></figure>" for title, fig in figs]
    if len(figs) > 1 and figs[1][0].startswith("FD-DINOv2"):  # the two Fréchet distances side by side
        blocks[:2] = [f"<div class=pair id=gfid-fd-dinov2>{blocks[0]}{blocks[1]}</div>"]
    parts += blocks
    parts.append("<h2>Cells not done</h2>")
    parts.append(_table(bad) if len(bad) else "<p class=ok>All cells are done.</p>")
    parts.append("<h2>Provenance</h2>")
    parts.append(_table(pd.DataFrame({"field": list(prov), "value": [str(v) for v in prov.values()]})))
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
