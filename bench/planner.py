"""Planner speed: a 10,000-cell study must plan (ids, steps from measured FLOPs, costs) in < 2 s."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

STUDY = """
name: bench10k
grid:
  recipe: [ae, clip_ae, ssl_ae, clip_ssl_ae]
  encoder: [tiny, S, B, L]
  data_size: [1000, 2000, 5000, 10000, 0]
  budget_flops: [{budgets}]
  seed: [0, 1, 2, 3, 4]
"""


def run() -> list[dict]:
    from sweeps import costs
    from sweeps.plan import plan
    from sweeps.schema import load_study

    budgets = ", ".join(f"{1e14 * 1.3 ** i:.3e}" for i in range(25))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench10k.yaml"
        path.write_text(STUDY.format(budgets=budgets))
        t0 = time.perf_counter()
        study = load_study(path)
        p = plan(study)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan(study)
        warm = time.perf_counter() - t0
    n = len(p.cells)
    target = 2.0
    return [
        {"bench": "plan 10k cells (cold: FLOPs measured)", "value": f"{cold:.2f} s", "reference": f"target {target:.1f} s",
         "ratio": f"{cold / target:.2f}x of target", "ok": cold < target, "cells": n, "stages": len(p.stages)},
        {"bench": "plan 10k cells (warm)", "value": f"{warm:.2f} s", "reference": f"target {target:.1f} s",
         "ratio": f"{warm / target:.2f}x of target", "ok": warm < target, "cells": n},
    ]
