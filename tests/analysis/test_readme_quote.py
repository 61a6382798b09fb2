"""The README's demo paragraph quotes a summary.md made by `make report`: its block must read back with the same
parser, and its one-sentence reading must be the one the numbers give (so neither can drift by hand)."""
from pathlib import Path

from analysis.summary import interpret, parse_summary, quoted

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quotes_a_parseable_demo_summary():
    block = quoted(README.read_text())
    assert block, "README.md has no summary block (python -m analysis quote --summary results/demo/summary.md)"
    s = parse_summary(block)
    assert s["study"] == "demo" and s["commit"] != "unknown" and s["cells_done"] == s["cells_total"] > 0
    assert {"ae", "clip_ssl_ae"} <= set(s["recipes"])
    for r in s["recipes"].values():
        assert r.get("exponent") is not None and r["ci"][0] <= r["exponent"] <= r["ci"][1]
    assert s["interpretation"] == interpret(s["recipes"], s["extrapolation"])
