"""The DiT bench's diffusers rows time our DiT against diffusers' DiT as diffusers runs it (speed itself:
`make bench`)."""
import pytest


def test_diffusers_rows(monkeypatch):
    pytest.importorskip("diffusers")
    from bench import dit
    from dit_eval import bench as b
    from dit_eval.models import DiT

    seen = {}

    def time_pair(ours, ref, x, y, iters, rounds):  # the models the row times, not the timing
        seen.update(ours=ours, ref=ref)
        return 1.0, 2.0, 2.0

    monkeypatch.setattr(b, "time_pair", time_pair)
    row = dit._vs_diffusers("tiny", (8, 8, 8), 4, 1, 1)
    assert isinstance(seen["ours"], DiT) and isinstance(seen["ref"], dit.DiffusersDiT)
    assert row["ok"] is True and "diffusers DiT" in row["bench"]
    assert row["ratio"] == 2.0 and row["value"] == 4.0
