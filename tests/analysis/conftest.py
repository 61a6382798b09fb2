"""Fixtures: a results table shaped like VTP's published compute curves (docs/method.md#published-scaling-figures)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

VTP = [81.26, 61.27, 41.8, 36.0, 32.0, 30.0, 28.0, 26.95]      # gFID, 5.5B → 190B GFLOPs
AE = [55.04, 55.89, 56.3, 56.9, 57.4, 57.8, 58.2, 58.56]        # reconstruction-only: gets worse
PROTO = "gfid0a1b2c"


def make_table(partial: bool = True) -> pd.DataFrame:
    budgets = np.logspace(np.log10(5.5e18), np.log10(1.9e20), len(VTP))
    rows = []
    for recipe, ys in (("vtp", VTP), ("ae", AE)):
        for i, (b, g) in enumerate(zip(budgets, ys)):
            rows.append(dict(study="fixture", cell=f"{recipe}-L-d0-f{b:.2g}-s0", recipe=recipe, encoder="L",
                             encoder_params=3.0e8, data_size=277_000_000, budget_flops=b,
                             tokenizer_flops=b * (1 + 0.01 * i), tokenizer_steps=1000 * (i + 1),
                             dit_flops=1e18, seed=0, rfid=2.0 / (1 + i) if recipe == "ae" else 3.0 / (1 + 0.5 * i),
                             linear_probe=0.1 + 0.08 * i if recipe == "vtp" else 0.05 + 0.002 * i,
                             linear_probe_pre=np.nan, zero_shot=np.nan, gfid=g, gfid_protocol=PROTO,
                             rfid_protocol="rfid99", status="done", reason=None,
                             pretrain_id=f"pretrain-{recipe}-{i}", fid_id=f"fid-{recipe}-{i}"))
    df = pd.DataFrame(rows)
    if partial:
        extra = [
            dict(recipe="vtp", budget_flops=4e20, status="failed", reason="dit: CUDA OOM", gfid=np.nan),
            dict(recipe="ae", budget_flops=4e20, status="pending", reason="pretrain", gfid=np.nan),
            dict(recipe="vtp", budget_flops=3e18, status="diverged", reason="pretrain: NaN at step 812", gfid=np.nan),
            dict(recipe="vtp", budget_flops=1e19, status="done", reason=None, gfid=44.0, gfid_protocol="otherproto"),
        ]
        base = df.iloc[0].to_dict()
        for k, e in enumerate(extra):
            r = dict(base, **e)
            r["tokenizer_flops"] = r["budget_flops"]
            r["cell"] = f"{r['recipe']}-L-d0-f{r['budget_flops']:.2g}-s{k + 1}"
            r["seed"] = k + 1
            df = pd.concat([df, pd.DataFrame([r])], ignore_index=True)
    return df


@pytest.fixture
def table() -> pd.DataFrame:
    return make_table()
