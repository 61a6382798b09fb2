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

    import os

    budgets = ", ".join(f"{1e14 * 1.3 ** i:.3e}" for i in range(25))
    with tempfile.TemporaryDirectory() as d:
        os.environ["VTP_CACHE"] = d  # an empty FLOPs cache: the cold number includes measuring
        costs._disk.cache_clear()
        path = Path(d) / "bench10k.yaml"
        path.write_text(STUDY.format(budgets=budgets))
        t0 = time.perf_counter()
        study = load_study(path)
        p = plan(study)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan(study)
        warm = time.perf_counter() - t0
        # a new process: in-memory memo gone, FLOPs read from the disk cache
        for f in (costs._tok, costs.dit_step_flops, costs._disk):
            f.cache_clear()
        t0 = time.perf_counter()
        plan(study)
        disk = time.perf_counter() - t0
        distinct = len(costs._disk())
        del os.environ["VTP_CACHE"]
    n = len(p.cells)
    target = 2.0
    return [
        {"bench": "plan 10k cells (cold: every FLOPs/step measured once)", "value": f"{cold:.2f} s", "reference": f"target {target:.1f} s",
         "ratio": f"{cold / target:.2f}x of target (one-time)", "ok": None, "cells": n, "stages": len(p.stages)},
        {"bench": f"plan 10k cells (FLOPs from disk cache, {distinct} entries)", "value": f"{disk:.2f} s",
         "reference": f"target {target:.1f} s", "ratio": f"{disk / target:.2f}x of target", "ok": disk < target, "cells": n},
        {"bench": "plan 10k cells (same process, memoized)", "value": f"{warm:.2f} s", "reference": f"target {target:.1f} s",
         "ratio": f"{warm / target:.2f}x of target", "ok": warm < target, "cells": n},
    ]
