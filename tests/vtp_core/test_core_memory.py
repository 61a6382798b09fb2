"""The memory plan's model of a pretrain step (`vtp_core.memory`): saved-for-backward bytes counted on the meta
device equal the real count, the affine model calibrated at two batch sizes predicts a third, and the
strategies order as they should. All on the meta device except one tiny real CPU step."""
import dataclasses

import pytest
import torch

import small_configs as small
from vtp_core import memory
from vtp_core.config import TokenizerConfig

OBJECTIVES = ("rec", "clip", "ssl")
CFG = small.tokenizer(recipe="clip_ssl_ae")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_meta_count_equals_the_real_count_on_cpu(objective):
    """fp32 on the CPU with real tensors (torch's CPU flash-attention kernel) vs the meta device modelling the CPU's
    kernels (SDPA as `_FlashAttention`, the composite RMSNorm): the same storages are saved, to the byte."""
    real = memory.saved_bytes(CFG, objective, 4, torch.float32, "cpu", extrapolate=False)
    meta = memory.saved_bytes(CFG, objective, 4, torch.float32, "meta", extrapolate=False, kernels="cpu")
    assert meta == real > 0


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_depth_one_extrapolation_equals_the_full_depth_count(objective):
    cfg = dataclasses.replace(CFG, clip_drop_rate=0.1, ssl_drop_rate=0.3)  # sample-drop inside the blocks too
    full = memory.saved_bytes(cfg, objective, 10, extrapolate=False)
    assert memory.saved_bytes(cfg, objective, 10) == pytest.approx(full, rel=1e-3)


@pytest.mark.parametrize("drop", [(0.0, 0.0), (0.1, 0.3)], ids=["no-drop", "method-drop"])
def test_affine_model_predicts_a_third_batch_within_15_percent(drop):
    """Calibrated at two small per-GPU batches ((2, 4), or (10, 20) with the method's drop rates), the model
    predicts the bytes measured at a larger third batch (its loss over that batch added, as world size 1 has)."""
    cfg = dataclasses.replace(CFG, clip_drop_rate=drop[0], ssl_drop_rate=drop[1])
    model = memory.calibrate(cfg)
    n0, n1 = model["n"]
    assert (n0, n1) == ((2, 4) if drop == (0.0, 0.0) else (10, 20))
    third = 8 * n1
    for o in OBJECTIVES:
        measured = memory.saved_bytes(cfg, o, third)
        predicted = memory.affine_saved_bytes(model, o, third) + memory.global_loss_bytes(cfg, o, third, torch.bfloat16)
        print(f"{o}: calibrated at {n0}, {n1}; at {third}: predicted {predicted / 1e6:.3f} MB, measured "
              f"{measured / 1e6:.3f} MB ({predicted / measured - 1:+.2%})")
        assert predicted == pytest.approx(measured, rel=0.15)


def test_flash_attention_keeps_no_scores():
    """On meta, SDPA is counted as the GPU kernels keep it: q, k, v, output, log-sum-exp; never (N, N)."""
    q = torch.empty(2, 4, 100, 8, device="meta", requires_grad=True)
    rec = memory._Recorder(set())
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), memory._MetaAutocast(None, "cuda", rec.exclude):
        out = torch.nn.functional.scaled_dot_product_attention(q * 1, q * 2, q * 3)
    assert out.shape == q.shape
    assert rec.totals()[0] == 4 * (2 * 4 * 100 * 8) * 4 + 2 * 4 * 100 * 4  # q, k, v, out fp32 + lse; no 100 x 100


def test_strategies_order_and_choice():
    model = memory.calibrate(CFG)
    world = 2
    totals = {s: memory.predict(CFG, world, s, model)["total"] for s in memory.strategies(CFG, world)}
    names = list(totals)
    assert names[:3] == ["none", "checkpoint", "checkpoint+microbatch:2"]  # per-GPU batches 32 / 8 / 4: k | 4
    assert names[-1] == "checkpoint+microbatch:4"
    assert totals["none"] > totals["checkpoint"] > totals["checkpoint+microbatch:2"] > totals[names[-1]]
    assert memory.choose(CFG, world, 1e6, model) == "none"
    between = (totals["checkpoint"] + totals["checkpoint+microbatch:2"]) / 2
    assert memory.choose(CFG, world, between, model) == "checkpoint+microbatch:2"
    assert memory.choose(CFG, world, 1e-6, model) is None
    parts = memory.predict(CFG, world, "none", model)
    assert parts["ddp_buckets"] == parts["grads"] > 0 and memory.predict(CFG, 1, "none", model)["ddp_buckets"] == 0
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert parts["lpips"] == 0 and parts["recompute"] == 0
    assert memory.predict(CFG, world, "checkpoint", model)["recompute"] > 0


def test_fused_rms_norm_keeps_input_and_rstd():
    """Modelling CUDA, RMSNorm keeps what `_fused_rms_norm` keeps: its input and an fp32 1/rms per row (the
    weight is a parameter); the CPU's composite keeps more."""
    x = torch.empty(3, 10, 16, device="meta", requires_grad=True)
    w = torch.nn.Parameter(torch.empty(16, device="meta"))
    fused = 3 * 10 * 16 * 4 + 3 * 10 * 4
    for kernels in ("cuda", "cpu"):
        rec = memory._Recorder({memory._storage(w)[0]})
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), \
                memory._MetaAutocast(None, kernels, rec.exclude):
            out = torch.nn.functional.rms_norm(x * 1, (16,), w, 1e-5)
        assert out.shape == x.shape
        assert (rec.totals()[0] == fused) if kernels == "cuda" else (rec.totals()[0] > fused)


def test_strategy_names():
    assert memory.parse_strategy("none") == (False, 1)
    assert memory.parse_strategy("checkpoint") == (True, 1)
    assert memory.parse_strategy("checkpoint+microbatch:16") == (True, 16)
    with pytest.raises(ValueError, match="memory strategy 'offload'"):
        memory.parse_strategy("offload")


def test_paper_vtp_l_cell_at_8_gpus():
    """The paper's VTP-L cell (batch 16,384 / 4,096 SSL / 2,048 rec, ViT-L, L4 decoder, LPIPS, 256 px) over 8 GPUs:
    the figures per component for each strategy (run with -s), and the affine model against a direct meta
    count at the full per-GPU batch."""
    cfg = TokenizerConfig(recipe="clip_ssl_ae", encoder="L", rec_loss="l1_lpips", lpips_weights="lpips.pt",
                          lpips_sha256="0" * 64)
    model = memory.calibrate(cfg)
    chosen = memory.choose(cfg, 8, 80.0, model)
    print(f"\npaper VTP-L, 8 GPUs, per-GPU batch {memory.per_gpu_batches(cfg, 8)}; calibrated at {model['n']}")
    for s in ("none", "checkpoint", "checkpoint+microbatch:2", chosen):
        print(f"  {s:>24}: {memory.describe(memory.predict(cfg, 8, s, model))}")
    assert memory.predict(cfg, 8, "none", model)["total"] > 500  # activations alone are hundreds of GB
    assert chosen is not None and chosen.startswith("checkpoint+microbatch:")
    assert memory.predict(cfg, 8, chosen, model)["total"] <= 80
    for o, n in memory.per_gpu_batches(cfg, 8).items():
        direct = memory.saved_bytes(cfg, o, int(n)) - memory.global_loss_bytes(cfg, o, int(n), torch.bfloat16)
        affine = memory.affine_saved_bytes(model, o, n)
        print(f"  act_{o} at {int(n)} images: affine {affine / memory.GiB:.1f} GB, direct {direct / memory.GiB:.1f} GB "
              f"({affine / direct - 1:+.2%})")
        assert affine == pytest.approx(direct, rel=0.15)
