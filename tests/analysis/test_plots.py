"""analysis.plots: files are written, statuses and protocols are handled, fits are the fit module's."""
from __future__ import annotations

import numpy as np

from analysis import plots
from analysis.fit import FitResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ok_png(p):
    data = p.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 10_000


def test_plot_scaling_writes_png_and_svg(table, tmp_path):
    fig = plots.plot_scaling(table, out_stem=tmp_path / "gfid_vs_flops", n_boot=100)
    png, svg = fig.paths
    assert _ok_png(png) and svg.read_text().lstrip().startswith("<?xml") and svg.stat().st_size > 10_000
    assert set(fig.fits) == {"ae", "vtp"} and all(isinstance(f, FitResult) for f in fig.fits.values())
    assert fig.protocols == {"gfid": "gfid0a1b2c"} and fig.n_excluded == 1
    assert "1 row(s) under other protocols" in fig.caption
    assert fig.fits["vtp"].params["alpha"] > 0 and fig.fits["ae"].params["alpha"] < 0
    assert fig.fits["vtp"].n_points == 8                # failed/pending/other-protocol rows not fitted
    svg_text = svg.read_text()
    for label in ("failed (1)", "diverged (1)", "pending / running / no value (1)", "held-out"):
        assert label in svg_text


def test_plot_vs_variants(table, tmp_path):
    lp = plots.plot_vs(table, "linear_probe", "gfid", out_stem=tmp_path / "lp")
    assert _ok_png(lp.paths[0]) and "Spearman" in lp.paths[1].read_text()
    rf = plots.plot_vs(table, "rfid", "gfid", out_stem=tmp_path / "rf")
    assert _ok_png(rf.paths[0])
    t = table.copy()
    t["encoder_params"] = t["budget_flops"] / 1e12      # a params axis with several values per recipe
    pv = plots.plot_vs(t, "encoder_params", "gfid", out_stem=tmp_path / "params", n_boot=50)
    assert _ok_png(pv.paths[0]) and not pv.fits["vtp"].refused


def test_plot_recipes_at_equal_flops(table, tmp_path):
    fig = plots.plot_recipes_at_equal_flops(table, out_stem=tmp_path / "eq", n_boot=50)
    assert _ok_png(fig.paths[0])
    assert plots.common_budget(table) == table[table.status == "done"]["budget_flops"].max()


def test_plot_survives_all_missing_group(table, tmp_path):
    t = table.copy()
    t.loc[t.recipe == "ae", "gfid"] = np.nan
    t.loc[t.recipe == "ae", "status"] = "pending"
    fig = plots.plot_scaling(t, out_stem=tmp_path / "partial", n_boot=50)
    assert _ok_png(fig.paths[0]) and fig.fits["ae"].refused
