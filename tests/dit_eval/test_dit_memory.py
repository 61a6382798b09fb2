"""The DiT step's memory model (`dit_eval.memory`): depth-1 extrapolation is exact, the affine model predicts a
third batch, the paper's B/1 step fits an 80 GB GPU without checkpointing. Meta device only."""
import pytest

import small_configs as small
from dit_eval import memory
from dit_eval.config import DiTSpec

SHAPE = (8, 8, 8)


def test_depth_extrapolation_and_affine_model():
    spec = small.dit()
    assert memory.saved_bytes(spec, SHAPE, 6) == memory.saved_bytes(spec, SHAPE, 6, extrapolate=False)
    model = memory.calibrate(spec, SHAPE)
    from vtp_core import memory as core

    measured = memory.saved_bytes(spec, SHAPE, 32)
    assert core.affine_saved_bytes(model, "dit", 32) == pytest.approx(measured, rel=0.15)


def test_paper_dit_fits_without_checkpointing():
    spec = DiTSpec()  # LightningDiT-B/1, global batch 1024
    model = memory.calibrate(spec, (64, 16, 16))
    parts = memory.predict(spec, 8, "none", model)
    assert memory.choose(spec, 8, 80.0, model) == "none" and parts["total"] < 80
    assert parts["ema"] == pytest.approx(parts["params"], rel=0.01) and parts["act_dit"] > parts["params"]
    assert memory.predict(spec, 8, "checkpoint", model)["total"] < parts["total"]
