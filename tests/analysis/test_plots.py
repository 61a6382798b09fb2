"""analysis.plots: files are written, statuses and protocols are handled, fits are the fit module's."""
from __future__ import annotations

import re

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


def _svg_tick_texts(svg_path, axis: str) -> list[str]:
    """Text drawn at the ticks of one axis ("x"/"y") in the SVG (matplotlib writes each text as a comment)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(svg_path, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))).getroot()
    out = []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        if re.fullmatch(f"{axis}tick_\\d+", g.get("id", "")):
            out += [c.text.strip() for c in g.iter() if c.tag is ET.Comment and c.text.strip()]
    return out


def test_log_axis_tick_labels_are_plain_numbers(table, tmp_path):
    """A gFID log axis between ~100 and ~250 reads 100, 125, 150, … (never 2×10² mathtext); FLOPs read 1e19."""
    t = table.copy()
    for recipe, (hi, lo) in (("vtp", (250.0, 110.0)), ("ae", (170.0, 190.0))):
        has = (t.recipe == recipe) & t.gfid.notna()
        t.loc[has, "gfid"] = np.linspace(hi, lo, int(has.sum()))
    fig = plots.plot_scaling(t, out_stem=tmp_path / "hundreds", n_boot=50)
    for labels in (fig.tick_labels["y"], _svg_tick_texts(fig.paths[1], "y")):
        assert len(labels) >= 3, labels
        for s in labels:
            assert re.fullmatch(r"\d+", s) and not set(s) & set("×$^"), labels
        assert 100 <= min(map(int, labels)) and max(map(int, labels)) <= 275, labels
    for labels in (fig.tick_labels["x"], _svg_tick_texts(fig.paths[1], "x")):
        assert labels and all(re.fullmatch(r"\d(\.\d+)?e\d+", s) for s in labels), labels     # 1e19, 2e19…
    eq = plots.plot_recipes_at_equal_flops(t, out_stem=tmp_path / "eq", n_boot=50)
    assert eq.tick_labels["y"] and all(re.fullmatch(r"\d+", s) for s in eq.tick_labels["y"]), eq.tick_labels
    wide = plots.plot_scaling(table, out_stem=tmp_path / "wide", n_boot=50)          # gFID ~20–100
    assert wide.tick_labels["y"] and all(re.fullmatch(r"\d+", s) for s in wide.tick_labels["y"]), wide.tick_labels


def test_tick_label_format():
    assert [plots.tick_label(v) for v in (120.0, 175.00000000000003, 0.5, 1e-3, 99999.0)] == \
        ["120", "175", "0.5", "0.001", "99999"]
    assert [plots.tick_label(v) for v in (1e19, 2e19, 2.5e19, 9.9996e19, 1e5, 5e-4)] == \
        ["1e19", "2e19", "2.5e19", "1e20", "1e5", "5e-4"]


def _with_anchors(table):
    """The fixture table plus two released tokenizers whose gFIDs would pull any law they entered: one with
    attributed pre-training FLOPs (a point), one without (a line), and their rows' anchor names."""
    import pandas as pd

    base = table.iloc[0].to_dict()
    rows = [dict(base, cell="anchor-vtp-l", recipe="anchor", anchor="vtp-l", tokenizer_flops=3.0e21, budget_flops=np.nan,
                 gfid=2.5, status="done"),
            dict(base, cell="anchor-vtp-b", recipe="anchor", anchor="vtp-b", tokenizer_flops=np.nan, budget_flops=np.nan,
                 gfid=4.0, status="done")]
    out = pd.concat([table.assign(anchor=""), pd.DataFrame(rows)], ignore_index=True)
    return out, out[out.anchor != ""]


def test_anchors_are_labelled_points_never_fitted(table, tmp_path):
    """Fits with the anchor rows in the table (as their own recipe) equal the fits without them; the figure
    labels both anchors, the one with FLOPs as a point, the other as a line."""
    from analysis.table import split_anchors

    full, anchors = _with_anchors(table)
    trained, got = split_anchors(full)
    assert list(got.cell) == ["anchor-vtp-l", "anchor-vtp-b"] and len(trained) == len(table)
    ref = plots.plot_scaling(table, out_stem=tmp_path / "ref", n_boot=50)
    fig = plots.plot_scaling(trained, out_stem=tmp_path / "with", n_boot=50, anchors=anchors)
    mixed = plots.plot_scaling(full, out_stem=tmp_path / "mixed", n_boot=50)  # anchors left in the rows
    for f in (fig, mixed):
        for g in ("vtp", "ae"):
            assert f.fits[g].params == ref.fits[g].params and f.fits[g].n_points == ref.fits[g].n_points
    assert mixed.fits["anchor"].refused  # an anchor-only group has no fittable point
    svg = fig.paths[1].read_text()
    for label in ("vtp-l 2.5", "vtp-b 4 (released)", "released tokenizer, not fitted (2)"):
        assert label in svg, label
    params = plots.plot_vs(trained, "encoder_params", "gfid", out_stem=tmp_path / "params", n_boot=50, anchors=anchors)
    assert "vtp-l 2.5" in params.paths[1].read_text()
