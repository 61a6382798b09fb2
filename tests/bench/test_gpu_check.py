"""`make gpu-check` is ready for a GPU: without CUDA it refuses in one line, and its dry rehearsal (tiny sizes
on the CPU) runs every row through the same code and writes the table as Markdown and JSON."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check

REPO = Path(__file__).resolve().parents[2]


def test_without_cuda_it_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA, even on a GPU machine
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == gpu_check.NO_CUDA and proc.stdout == ""


def test_cpu_runs_only_as_the_tiny_dry_rehearsal(capsys):
    assert gpu_check.main(["--device", "cpu"]) == 2
    assert "--tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_dry_rehearsal_produces_every_row(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    [md] = tmp_path.glob("*-cpu.md")
    [js] = tmp_path.glob("*-cpu.json")
    doc = json.loads(js.read_text())
    rows = {r["id"]: r for r in doc["rows"]}
    assert {i.split(".")[0] for i in rows} == {"a", "b", "c", "d", "e", "z"}
    assert {"a.tiny.eager", "a.tiny.compiled"} <= set(rows)  # eager and compiled
    assert sum(i.startswith("d.") for i in rows) == 2  # two batch sizes
    assert not [r for r in doc["rows"] if r["error"]], [r["value"] for r in doc["rows"] if r["error"]]
    assert rows["c"]["ok"] and rows["c"]["data"]["graphs"] > 0  # the compiled run did compile (aot_eager)
    assert rows["e"]["ok"] and all(math.isfinite(v) for v in rows["e"]["data"]["gfid"].values())  # finite gFIDs
    assert "MFU n/a" in rows["a.tiny.compiled"]["value"] and rows["a.tiny.compiled"]["ok"] is None
    assert "measured n/a" in rows["d.b4"]["value"]
    assert doc["device"] == "cpu" and doc["commit"] and doc["date"].endswith("UTC")
    text = md.read_text()
    assert text.startswith(f"#### {doc['date'][:10]} · cpu · commit {doc['commit']}")
    assert text.count("\n| ") == len(doc["rows"]) + 1  # the header and one line per row
