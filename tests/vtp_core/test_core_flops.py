"""The FLOPs convention: counter vs closed form, depth extrapolation is exact, LPIPS counted once, memoised, fast.

TokenizerConfig's defaults are the paper's (ViT-L, batch 16384, 224/96 crops, K = 65536): every test but the
one that prices those defaults sets its sizes explicitly (`_small`).
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vtp_core import flops, registry
from vtp_core.batches import sub_batch_sizes
from vtp_core.config import DataConfig, TokenizerConfig
from vtp_core.losses.lpips import LPIPS
from vtp_core.models.vit import ViTEncoder


def _small(**kw) -> TokenizerConfig:
    """A CPU-sized config, every size said explicitly (the defaults are the paper's)."""
    base = {"encoder": "tiny", "decoder": "tiny", "text": "tiny", "patch": 4, "latent_channels": 8, "batch_size": 16,
            "global_crop": 24, "local_crop": 16, "n_local_crops": 2, "dino_prototypes": 256, "dino_hidden": 256,
            "dino_bottleneck": 64, "rec_loss": "l1", "data": DataConfig(dataset="fashion_mnist", image_size=32)}
    return TokenizerConfig(**{**base, **kw})


@pytest.fixture
def deep_sizes() -> dict[str, str]:
    """Towers deeper than 2, so `count_step_flops` takes its depth-extrapolation path."""
    registry.register("encoder", "test_d3", registry.ViTSize(32, 3, 2), overwrite=True)
    registry.register("decoder", "test_d3", registry.ViTSize(32, 4, 2), overwrite=True)
    registry.register("text", "test_d3", registry.TextSize(32, 3, 2, 8, 32, vocab_size=512), overwrite=True)
    return {"encoder": "test_d3", "decoder": "test_d3", "text": "test_d3"}


def _bare_lpips_flops(n: int, side: int) -> int:
    """LPIPS as the rec loss runs it, counted on its own: VGG16 forward on a reconstruction that needs grad and on
    a target that does not, and the backward to the reconstruction."""
    with torch.device("meta"):
        net = LPIPS()
    x_hat = torch.empty(n, 3, side, side, device="meta", requires_grad=True)
    x = torch.empty(n, 3, side, side, device="meta")
    with FlopCounterMode(display=False) as fc:
        net(x_hat, x).mean().backward()
    return fc.get_total_flops()


@pytest.mark.parametrize("name,patch,image", [("tiny", 4, 32), ("S", 16, 256), ("B", 16, 256)])
def test_counter_matches_analytic_vit_forward(name, patch, image):
    size = registry.get("encoder", name)
    with torch.device("meta"):
        enc = ViTEncoder(size, patch, latent_channels=8)
    with FlopCounterMode(display=False) as fc:
        enc.encode(torch.empty(2, 3, image, image, device="meta"))
    n_patches = (image // patch) ** 2
    want = 2 * flops.vit_forward_flops_analytic(size.width, size.depth, n_patches + 1,
                                                registry.swiglu_hidden(size.width, size.mlp_ratio),
                                                patch, n_patches, out_dim=8)
    assert fc.get_total_flops() == pytest.approx(want, rel=0.05)


@pytest.mark.parametrize("rec_loss", ["l1", "l1_lpips"])
def test_depth_extrapolation_is_exact(deep_sizes, rec_loss):
    cfg = _small(recipe="clip_ssl_ae", batch_size=4, rec_loss=rec_loss, **deep_sizes)
    assert flops.count_step_flops(cfg, extrapolate=True) == flops.count_step_flops(cfg, extrapolate=False)


@pytest.mark.parametrize("deep", [False, True], ids=["direct", "extrapolated"])
def test_lpips_adds_exactly_one_vgg16_to_rec(deep_sizes, deep):
    """l1_lpips - l1 is the bare VGG16 LPIPS forward + backward at B_rec and the image size, once: not scaled by
    the depth extrapolation (deep towers), and nothing outside 'rec'."""
    cfg = _small(recipe="clip_ssl_ae", batch_size=32, **(deep_sizes if deep else {}))
    assert deep == any(s.depth > 2 for s in flops._full_sizes(cfg).values())  # the path under test is taken
    l1 = flops.count_step_flops(cfg)
    on = flops.count_step_flops(dataclasses.replace(cfg, rec_loss="l1_lpips"))
    vgg = _bare_lpips_flops(sub_batch_sizes(cfg)[1], cfg.data.image_size)
    assert vgg > 0
    assert on["rec"] - l1["rec"] == pytest.approx(vgg, rel=1e-9)
    assert {k: v for k, v in on.items() if k != "rec"} == {k: v for k, v in l1.items() if k != "rec"}


def test_memo_key_distinguishes_rec_loss():
    cfg = _small()
    assert flops._key(cfg) != flops._key(dataclasses.replace(cfg, rec_loss="l1_lpips"))
    # the weights path is not versioned: it cannot change the count, and does not split the memo
    on = dataclasses.replace(cfg, rec_loss="l1_lpips")
    assert flops._key(on) == flops._key(dataclasses.replace(on, lpips_weights="/somewhere/lpips.pt"))
    assert flops.train_step_flops(on)["total"] > flops.train_step_flops(cfg)["total"]


def test_train_step_flops_structure_and_ordering():
    base = _small()
    res = {r: flops.train_step_flops(dataclasses.replace(base, recipe=r)) for r in ("ae", "clip_ae", "ssl_ae", "clip_ssl_ae")}
    assert set(res["ae"]["by_component"]) == {"rec"}
    assert set(res["clip_ssl_ae"]["by_component"]) == {"rec", "clip", "ssl"}
    for r in res.values():
        assert r["total"] == pytest.approx(sum(r["by_component"].values()))
        assert r["per_sample"] == pytest.approx(r["total"] / base.batch_size)
    assert res["ae"]["total"] < res["ssl_ae"]["total"] < res["clip_ssl_ae"]["total"]
    # a step costs about 3x a forward; rec (L1 only) = encoder + decoder over B_rec images
    b_rec = sub_batch_sizes(base)[1]
    enc_fwd = flops.encode_flops(base)
    assert 1.5 * 3 * enc_fwd * b_rec < res["ae"]["total"] < 3 * 3 * enc_fwd * b_rec


def test_memoised_and_independent_of_steps_and_seed():
    cfg = _small()
    first = flops.train_step_flops(cfg)
    cells = [dataclasses.replace(cfg, steps=i + 1, seed=i % 3) for i in range(10_000)]
    t = time.perf_counter()
    results = [flops.train_step_flops(c)["total"] for c in cells]
    assert time.perf_counter() - t < 2.0
    assert set(results) == {first["total"]}
    assert cfg.batch_size < 128
    assert flops.train_step_flops(dataclasses.replace(cfg, batch_size=128))["total"] > first["total"]


def test_paper_defaults_costs():
    """The default TokenizerConfig() IS the paper configuration (ViT-L/16, L4 decoder, base text, batch 16384,
    256 px, 224/96 crops x 8 locals, K = 65536, L1 + LPIPS): priced on meta, no weights file needed."""
    cfg = TokenizerConfig()
    assert (cfg.recipe, cfg.encoder, cfg.decoder, cfg.text, cfg.patch, cfg.latent_channels) == \
        ("clip_ssl_ae", "L", "L4", "base", 16, 64)
    assert (cfg.batch_size, cfg.data.image_size, cfg.global_crop, cfg.local_crop, cfg.n_local_crops) == \
        (16384, 256, 224, 96, 8)
    assert (cfg.dino_prototypes, cfg.dino_hidden, cfg.dino_bottleneck, cfg.rec_loss) == (65536, 2048, 256, "l1_lpips")
    assert abs(flops.encoder_params(cfg) - 303.5e6) / 303.5e6 < 0.02
    res = flops.train_step_flops(cfg)
    by, total = res["by_component"], res["total"]
    shares = {k: v / total for k, v in by.items()}
    print(f"paper defaults: per_sample {res['per_sample']:.3e} FLOPs; "
          f"shares {({k: f'{v:.1%}' for k, v in shares.items()})}")
    assert 3e11 < res["per_sample"] < 3e12  # docs/method.md#flops-accounting: ~0.5-0.9 TFLOP per sample seen for VTP-L
    # SSL (2 x 224 globals + 8 x 96 locals through ViT-L for 1/4 of the batch, teacher forward, K = 65536
    # heads) is a large share of the step, not the ~2% a toy-sized SSL setup gives
    assert 0.2 < shares["ssl"] < 0.6
    b_rec = sub_batch_sizes(cfg)[1]
    assert by["rec"] - flops.train_step_flops(dataclasses.replace(cfg, rec_loss="l1"))["by_component"]["rec"] == \
        pytest.approx(_bare_lpips_flops(b_rec, 256), rel=1e-9)


@pytest.mark.parametrize("rec_loss", ["l1", "l1_lpips"])
def test_stage2_step_flops_counts_decoder_and_discriminator(rec_loss):
    cfg = _small(recipe="ae", stage2_steps=10, disc_channels=8, rec_loss=rec_loss)
    f2 = flops.stage2_step_flops(cfg)
    rec = flops.train_step_flops(cfg)["by_component"]["rec"]
    assert 0.5 * rec < f2 < 5 * rec


def test_stage2_counts_lpips_when_on():
    """Stage 2 runs LPIPS in its rec loss too: at least one VGG16 forward + backward more than with L1 only
    (the adaptive GAN weight differentiates rec once more)."""
    cfg = _small(recipe="ae", stage2_steps=10, disc_channels=8)
    on = flops.stage2_step_flops(dataclasses.replace(cfg, rec_loss="l1_lpips"))
    vgg = _bare_lpips_flops(sub_batch_sizes(cfg)[1], cfg.data.image_size)
    assert on - flops.stage2_step_flops(cfg) >= vgg
