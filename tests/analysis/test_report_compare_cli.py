"""analysis.compare, analysis.report and the CLI on the VTP-shaped fixture (partial table)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from analysis.compare import CompareError, compare_recipes, compute_to_reach
from analysis.fit import fit
from analysis.report import write_report

CHROMIUM = "/usr/bin/chromium"


def test_compute_to_reach_matches_inverse():
    x = np.logspace(15, 18, 10)
    r = fit(x, 20 + 50 * (x / 1e16) ** -0.5, "offset_power", n_boot=100, extrapolate=False)
    reach = compute_to_reach(r, 30.0)
    assert reach.x == pytest.approx(1e16 * (10 / 50) ** (-1 / 0.5), rel=1e-3)      # 2.5e17
    assert reach.ci[0] <= reach.x <= reach.ci[1] and reach.frac_unreachable == 0
    below_floor = compute_to_reach(r, 15.0)
    assert np.isinf(below_floor.x) and below_floor.frac_unreachable > 0.9


def test_compare_recipes(table):
    c = compare_recipes(table, "ae", "vtp", n_boot=200)
    assert c.target == 55.04 and c.x_a == pytest.approx(5.5e18)   # AE's best: its cheapest run
    assert c.multiplier < 1 and c.ci[0] <= c.multiplier <= c.ci[1]  # VTP overtakes AE only at ~1e19
    assert "more tokenizer flops" in c.sentence()
    back = compare_recipes(table, "vtp", "ae", n_boot=200)
    assert "does not reach" in back.sentence()                    # AE never gets better with compute
    t = table.copy()
    t.loc[t.recipe == "ae", "gfid"] *= 0.9                        # make ae's best reachable by vtp cheaply
    assert compare_recipes(t, "ae", "vtp", n_boot=100).multiplier > 0
    with pytest.raises(CompareError, match="unknown recipe 'clip'"):
        compare_recipes(table, "ae", "clip")


def test_report_on_partial_table(table, tmp_path):
    path = write_report(table, "fixture", tmp_path, {"git commit": "deadbeef"}, n_boot=100)
    text = path.read_text()
    assert 'id=provisional' in text and "PROVISIONAL" in text
    for s in ("deadbeef", "gfid0a1b2c", "dit: CUDA OOM", "pretrain: NaN at step 812", "Fitted laws",
              "alpha = 1.1", "needs"):
        assert s in text, s
    for img in re.findall(r'<img src="([^"]+)"', text):
        assert (tmp_path / img).stat().st_size > 10_000
    done = table[table.status == "done"].copy()
    clean = write_report(done[done.gfid_protocol == "gfid0a1b2c"], "fixture", tmp_path / "clean", n_boot=50)
    assert "PROVISIONAL" not in clean.read_text() and "All cells are done" in clean.read_text()


def test_cli(table, tmp_path, capsys):
    tp = tmp_path / "runs.parquet"
    table.to_parquet(tp)
    assert main(["compare", "--table", str(tp), "ae", "vtp", "--n-boot", "100"]) == 0
    assert "vtp" in capsys.readouterr().out
    assert main(["compare", "--table", str(tp), "ae", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown recipe 'nosuch'") and "\n" not in err
    assert main(["report", "--table", str(tmp_path / "missing.parquet"), "--out", str(tmp_path)]) == 2
    assert "no such results table" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["report", "--table", str(tmp_path / "bad.csv"), "--out", str(tmp_path)]) == 2
    assert "missing column" in capsys.readouterr().err
    assert main(["report", "--table", str(tp), "--out", str(tmp_path / "rep"), "--n-boot", "50"]) == 0
    assert (tmp_path / "rep" / "report.html").exists()


def test_module_exit_code_and_no_torch(tmp_path):
    """`python -m analysis` exits 2 with one line on a missing table; nothing in analysis imports torch."""
    code = ("import sys, runpy; sys.argv = ['analysis', 'compare', '--table', sys.argv[1], 'a', 'b']\n"
            "import analysis.report, analysis.plots\n"
            "try:\n    runpy.run_module('analysis', run_name='__main__')\n"
            "except SystemExit as e:\n    print('torch' in sys.modules, e.code)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.parquet")], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "2"], (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(table, tmp_path):
    """The page is not blank and every <img> has loaded (naturalWidth > 0)."""
    path = write_report(table, "fixture", tmp_path, {"git commit": "x"}, n_boot=50)
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{const bad=[...document.images]"
        ".filter(i=>!i.complete||i.naturalWidth===0).length;document.title='IMGS:'+document.images.length+"
        "':BAD:'+bad;});</script></body>"))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"<title>IMGS:(\d+):BAD:(\d+)</title>", dom)
    assert m, dom[:500]
    assert int(m.group(1)) >= 3 and int(m.group(2)) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2400", path.as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image as mpimg
    img = mpimg.imread(shot)
    rgb = img[..., :3]
    inked = float((rgb.min(axis=-1) < 0.9).mean())                   # share of non-white pixels
    assert img.shape[0] > 100 and inked > 0.01 and float(rgb.std()) > 0.02, (inked, float(rgb.std()))


def test_compare_refuses_to_read_a_law_far_outside_its_measured_range():
    """A law is read at most EXTRAPOLATE (4x) beyond the compute it was fitted on: when B's law would reach
    A's best only far outside B's budgets, the sentence names the range instead of a multiplier (a flat
    law's inverse sends the multiplier to 1e20-like values otherwise); inside the range it gives one."""
    from analysis.compare import EXTRAPOLATE, compare_fits

    x = np.logspace(12, 13, 6)  # one decade measured
    rng = np.random.default_rng(0)
    a = fit(x, 50 * (x / 1e12) ** -0.3 * np.exp(rng.normal(0, 0.01, 6)), "power", n_boot=200, extrapolate=False)
    b_flat = fit(x, 60 * (x / 1e12) ** -0.01 * np.exp(rng.normal(0, 0.01, 6)), "power", n_boot=200, extrapolate=False)
    target = 50 * 10 ** -0.3  # A's value at its largest budget
    far = compare_fits(a, b_flat, target, x_a=1e13, a="ae", b="vtp")
    assert not 1e12 / EXTRAPOLATE <= far.x_b.x <= 1e13 * EXTRAPOLATE
    s = far.sentence()
    assert "outside the measured range (1e+12–1e+13 x;" in s and "no multiplier" in s and "×–" not in s
    b_near = fit(x, 45 * (x / 1e12) ** -0.3 * np.exp(rng.normal(0, 0.01, 6)), "power", n_boot=200, extrapolate=False)
    near = compare_fits(a, b_near, target, x_a=1e13, a="ae", b="vtp")
    assert "less x (95% CI" in near.sentence() and "outside" not in near.sentence()
    assert 1 < near.multiplier < EXTRAPOLATE * 10


def test_report_lists_anchors_outside_the_fits(table, tmp_path):
    """Anchor rows get their own table and labelled points; the fitted laws and the summary are the trained
    cells' alone."""
    import datetime as dt

    import numpy as np
    import pandas as pd

    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    done = table[(table.status == "done") & (table.gfid_protocol == "gfid0a1b2c")].assign(anchor="")
    anchor = dict(done.iloc[0].to_dict(), cell="anchor-vtp-l", recipe="anchor", anchor="vtp-l", gfid=2.5,
                  tokenizer_flops=np.nan, budget_flops=np.nan)
    with_anchor = write_report(pd.concat([done, pd.DataFrame([anchor])], ignore_index=True), "fixture",
                               tmp_path / "a", n_boot=50, commit="c", now=now)
    alone = write_report(done, "fixture", tmp_path / "b", n_boot=50, commit="c", now=now)
    text = with_anchor.read_text()
    assert "Released tokenizers (anchors)" in text and "vtp-l" in text
    assert (tmp_path / "a" / "summary.md").read_text() == (tmp_path / "b" / "summary.md").read_text()
    assert "PROVISIONAL" not in text and "anchor" not in alone.read_text().split("<h2>Fitted laws</h2>")[1].split(
        "<h2>")[0]


def test_report_of_a_study_with_no_cell_done_yet(table, tmp_path):
    """`make report` right after submitting (every cell pending) writes a report, not a matplotlib traceback."""
    pending = table.assign(status="pending", gfid=np.nan)
    path = write_report(pending, "fixture", tmp_path, n_boot=20)
    assert path.exists() and "not done" in path.read_text().lower() or "pending" in path.read_text()


def test_report_puts_fd_dinov2_beside_gfid(table, tmp_path):
    """A study that computed FD-DINOv2 gets its scaling figure next to gFID's (one row), with its protocol
    recorded; a study without it gets no such figure."""
    df = table.copy()
    df["fd_dinov2"] = df["gfid"] * 3.0
    df["fd_dinov2_protocol"] = "dino1234abcd"
    text = write_report(df, "fixture", tmp_path, n_boot=50).read_text()
    pair = re.search(r"<div class=pair id=gfid-fd-dinov2>(.*?)</div>", text)
    assert pair and "gfid_vs_tokenizer_flops.png" in pair.group(1) and "fd_dinov2_vs_tokenizer_flops.png" in pair.group(1)
    assert (tmp_path / "fd_dinov2_vs_tokenizer_flops.png").stat().st_size > 10_000
    assert "fd_dinov2 protocol" in text and "dino1234abcd" in text
    plain = write_report(table, "fixture", tmp_path / "plain", n_boot=50).read_text()
    assert "fd_dinov2" not in plain and "class=pair" not in plain
