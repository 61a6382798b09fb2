"""The DiT bench's diffusers rows: the target row's reference as diffusers runs by default, the information
row's with its Linears on our GEMMs (speed itself: `make bench`)."""
import pytest
import torch


@pytest.mark.parametrize("same_gemm", [False, True])
def test_diffusers_rows(same_gemm, monkeypatch):
    pytest.importorskip("diffusers")
    from bench import dit
    from dit_eval import bench as b
    from vtp_core.models.linear import Linear

    seen = {}

    def time_pair(ours, ref, x, y, iters, rounds):  # the models the row times, not the timing
        seen["ref"] = ref
        return 1.0, 2.0, 2.0

    monkeypatch.setattr(b, "time_pair", time_pair)
    row = dit._vs_diffusers("tiny", (8, 8, 8), 4, 1, 1, same_gemm=same_gemm)
    linears = [m for m in seen["ref"].modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all((type(m) is Linear) == same_gemm for m in linears)
    assert (row["ok"] is None) == same_gemm and ("our GEMMs" in row["bench"]) == same_gemm
    assert row["ratio"] == 2.0 and row["value"] == 4.0
