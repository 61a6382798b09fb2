"""The tokenizer bench's references are what its rows say they are (speed itself: `make bench`)."""
import re

import pytest
import torch

from bench.tokenizer import _case, _pair
from vtp_core.models.linear import Linear


@pytest.mark.parametrize("reference", ["vit", "vit_onednn", "eva"])
def test_references_build_and_match_ours_in_shape(reference):
    ours, ref = _pair("tiny", 16, 4, 8, 2, "cpu", reference)
    assert ref.fwd(ref.x).shape == ours.fwd(ours.x).shape == (2, 3, 16, 16)
    n_ours = sum(p.numel() for p in ours.model.parameters())
    n_ref = sum(p.numel() for p in ref.model.parameters())
    if reference == "eva":  # the same architecture: parameter counts agree to within the patch/1x1-conv details
        assert abs(n_ref - n_ours) / n_ours < 0.01
        blk = ref.model.enc.blocks[0]
        assert blk.mlp.fc1_g.out_features == ours.model.encoder.trunk.blocks[0].mlp.fc1_g.out_features
        assert ref.model.enc.rope is not None
    linears = [m for m in ref.model.modules() if isinstance(m, torch.nn.Linear)]
    # the target row's reference runs as timm does by default; the information rows' on our GEMMs (`route_linears`)
    assert all((type(m) is Linear) == (reference != "vit") for m in linears) and len(linears) > 10
    ref.step()  # a full train step runs
    assert all(torch.isfinite(p).all() for p in ref.model.parameters())


def test_case_rows_have_the_table_fields():
    row = _case("tiny", 16, 4, 8, 2, rounds=3, iters=1, isolated=False)
    assert set(row) == {"bench", "value", "reference", "ratio", "ok"} and row["value"] > 0 and row["ok"] in (True, False)
    q1, q3 = map(float, re.search(r"quartiles ([\d.]+)-([\d.]+);", row["bench"]).groups())
    assert q1 <= row["ratio"] + 1e-3 and row["ratio"] <= q3 + 1e-3  # the median lies between its quartiles
    t_ours, t_ref = map(float, re.search(r"step ([\d.]+) / ([\d.]+) ms\)", row["bench"]).groups())
    assert t_ours == pytest.approx(2 / row["value"] * 1e3, rel=2e-3)  # the step time beside images/s (batch 2)
    assert t_ref == pytest.approx(2 / row["reference"] * 1e3, rel=2e-3)
    info = _case("tiny", 16, 4, 8, 2, rounds=1, iters=1, reference="eva", isolated=False)
    assert info["ok"] is None and "Eva" in info["bench"]


def test_make_bench_rows_run_each_side_in_its_own_process():
    """What `make bench` runs: ours and the reference each in a spawned process of its own, stepped in
    alternation; the compiled variant compiles in those processes (ours two graphs: encoder stack and
    decoder; the reference one)."""
    from bench.tokenizer import _Remote

    import multiprocessing

    row = _case("tiny", 16, 4, 8, 2, rounds=1, iters=1)
    assert "each in its own process" in row["bench"] and row["value"] > 0 and row["reference"] > 0
    assert not multiprocessing.active_children()  # both sides' processes ended with the row
    args = ("tiny", 16, 4, 8, 2, "cpu", "vit")
    ours, ref = _Remote("ours", args), _Remote("ref", args)
    try:
        assert ours.flops() / ref.flops() == pytest.approx(1.02, abs=0.003)  # built in the child, as in _pair
        assert ours.compile("aot_eager") >= 2 and ref.compile("aot_eager") >= 1
        assert ours.seconds(1) > 0
    finally:
        ours.close()
        ref.close()
    assert not ours.proc.is_alive() and not ref.proc.is_alive()


def test_a_side_process_starts_with_this_thread_count_without_calling_set_num_threads():
    """As a trainer's process: torch.set_num_threads would also turn MKL's dynamic threading off, which slows
    torch's CPU flash attention 1.4-1.7x (its GEMMs fan out inside its own parallel loop)."""
    from bench.tokenizer import _Remote

    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)  # not what a fresh process would pick from the environment
    side = _Remote("ref", ("tiny", 16, 4, 8, 2, "cpu", "vit"))
    try:
        assert side.threads() == (torch.get_num_threads(), False)
    finally:
        side.close()
        torch.set_num_threads(before)


def test_a_side_that_fails_in_its_process_raises_here_with_its_traceback():
    from bench.tokenizer import _Remote

    bad = _Remote("ours", ("no-such-size", 16, 4, 8, 2, "cpu", "vit"))
    try:
        with pytest.raises(RuntimeError, match="the ours process failed:(.|\n)*no-such-size"):
            bad.flops()
    finally:
        bad.close()
    assert not bad.proc.is_alive()


def test_compiled_case_compiles_both_sides():
    """The GPU rows' compiled variant: ours through `compile_towers` (as the trainer), the reference whole."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    row = _case("tiny", 16, 4, 8, 2, rounds=1, iters=1, compiled="aot_eager", isolated=False)
    assert "compiled (aot_eager)" in row["bench"] and row["value"] > 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs >= 3  # encoder stack, decoder, reference
    torch._dynamo.reset()


@pytest.mark.parametrize("size, excess", [("tiny", 0.02), ("S", 0.0)])
def test_reference_does_the_same_arithmetic_except_tiny_swiglu_rounding(size, excess):
    """The time ratio compares equal work at S (and B): SwiGLU's hidden int(8D/3) is exact for D = 384 / 768.
    At tiny (D = 64) it rounds 170.7 up to 176, so ours does ~2 % more FLOPs than the GELU MLP's 4D; the rows
    print the FLOPs ratio beside the time ratio, attention included (`vtp_core.flops.flop_counter_mode`; torch's
    own table counts its CPU flash kernel as 0)."""
    ours, ref = _pair(size, 32, 4 if size == "tiny" else 16, 8, 2, "cpu")
    assert ours.flops() / ref.flops() == pytest.approx(1 + excess, abs=0.003)
    row = _case("tiny", 16, 4, 8, 2, rounds=1, iters=1, isolated=False)
    assert "FLOPs ours/ref 1.0" in row["bench"]


def test_images_per_second_keep_four_significant_figures():
    from bench.tokenizer import _sig

    assert (_sig(0.51234), _sig(1022.8), _sig(25.437)) == (0.5123, 1023.0, 25.44)
