"""The tokenizer bench's rows compare what they say they compare (speed itself: `make bench` on a GPU)."""
import re

import pytest
import torch

from bench.tokenizer import _case, _pair


def test_reference_builds_and_matches_ours_in_shape():
    ours, ref = _pair("tiny", 16, 4, 8, 2, "cpu")
    assert ref.fwd(ref.x).shape == ours.fwd(ours.x).shape == (2, 3, 16, 16)
    assert torch.equal(ours.x, ref.x)  # the same batch on both sides
    ref.step()  # a full train step runs
    assert all(torch.isfinite(p).all() for p in ref.model.parameters())


@pytest.mark.parametrize("size, excess", [("tiny", 0.02), ("S", 0.0)])
def test_reference_does_the_same_arithmetic_except_tiny_swiglu_rounding(size, excess):
    """The time ratio compares equal work at S (and B): SwiGLU's hidden int(8D/3) is exact for D = 384 / 768.
    At tiny (D = 64) it rounds 170.7 up to 176, so ours does ~2 % more FLOPs than the GELU MLP's 4D; the rows
    print the FLOPs ratio beside the time ratio, attention included (`vtp_core.flops.flop_counter_mode`)."""
    ours, ref = _pair(size, 32, 4 if size == "tiny" else 16, 8, 2, "cpu")
    assert ours.flops() / ref.flops() == pytest.approx(1 + excess, abs=0.003)


def test_case_rows_have_the_table_fields():
    row = _case("tiny", 16, 4, 8, 2, rounds=3, iters=1, device="cpu")
    assert set(row) == {"bench", "value", "reference", "ratio", "ok"}
    assert row["value"] > 0 and row["ok"] in (True, False)
    q1, q3 = map(float, re.search(r"quartiles ([\d.]+)-([\d.]+);", row["bench"]).groups())
    assert q1 <= row["ratio"] + 1e-3 and row["ratio"] <= q3 + 1e-3  # the median lies between its quartiles
    t_ours, t_ref = map(float, re.search(r"step ([\d.]+) / ([\d.]+) ms\)", row["bench"]).groups())
    assert t_ours == pytest.approx(2 / row["value"] * 1e3, rel=2e-3)  # the step time beside images/s (batch 2)
    assert t_ref == pytest.approx(2 / row["reference"] * 1e3, rel=2e-3)
    assert "FLOPs ours/ref 1.0" in row["bench"]


def test_compiled_case_compiles_both_sides():
    """The compiled rows: ours through `compile_towers` (each block, as the trainer), the reference whole."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    row = _case("tiny", 16, 4, 8, 2, rounds=1, iters=1, device="cpu", compiled="aot_eager")
    assert "compiled (aot_eager)" in row["bench"] and row["value"] > 0
    # ours: the encoder block (RMSNorm) and the decoder block (LayerNorm); the reference: one graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs >= 3
    torch._dynamo.reset()


def test_without_cuda_the_gpu_rows_are_skipped(monkeypatch):
    from bench import tokenizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = tokenizer.run()
    assert len(rows) == 4 and all(r["value"] == "skipped: no CUDA" and r["ok"] is None for r in rows)
    assert {r["bench"].split()[3] for r in rows} == {"S", "B"}
    assert sum("compiled" in r["bench"] for r in rows) == 2


def test_images_per_second_keep_four_significant_figures():
    from bench.tokenizer import _sig

    assert (_sig(0.51234), _sig(1022.8), _sig(25.437)) == (0.5123, 1023.0, 25.44)
