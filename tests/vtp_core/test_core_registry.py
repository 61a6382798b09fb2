"""Walk the registry: paper-size parameter counts on meta; every tiny recipe trains a step for real."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vtp_core import registry
from vtp_core.batches import CaptionTable, make_batch
from vtp_core.data import CLASS_NAMES
from vtp_core.config import RECIPES
from vtp_core.data import load_train
from vtp_core.models.vit import PixelDecoder, ViTEncoder
from vtp_core.models.text import TextTower
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.tokenizer import Tokenizer
import small_configs as small

PAPER_ENCODER_PARAMS = {"S": 21.6e6, "B": 85.7e6, "L": 303.5e6}  # docs/method.md#model-sizes (patch 16)


@pytest.mark.parametrize("name", registry.list_sizes("encoder"))
def test_encoder_sizes_build_on_meta(name):
    with torch.device("meta"):
        enc = ViTEncoder(registry.get("encoder", name), patch=16, latent_channels=64)
    n = registry.count_params(enc)
    assert n > 0
    if name in PAPER_ENCODER_PARAMS:
        assert abs(n - PAPER_ENCODER_PARAMS[name]) / PAPER_ENCODER_PARAMS[name] < 0.02, n


@pytest.mark.parametrize("name", registry.list_sizes("decoder"))
def test_decoder_sizes_build_on_meta(name):
    with torch.device("meta"):
        dec = PixelDecoder(registry.get("decoder", name), patch=16, latent_channels=64)
    if name == "L4":
        assert abs(registry.count_params(dec) - 51.3e6) / 51.3e6 < 0.02


@pytest.mark.parametrize("name", registry.list_sizes("text"))
def test_text_sizes_build_on_meta(name):
    with torch.device("meta"):
        tower = TextTower(registry.get("text", name))
    if name == "base":  # 85.1M in the 12 residual blocks (docs/method.md#model-sizes)
        blocks = sum(p.numel() for p in tower.blocks.parameters())
        assert abs(blocks - 85.1e6) / 85.1e6 < 0.02


def test_swiglu_hidden_matches_dinov3():
    assert [registry.swiglu_hidden(d) for d in (384, 768, 1024)] == [1024, 2048, 2736]


def test_register_and_errors():
    registry.register("encoder", "test_xs", registry.ViTSize(32, 1, 2), overwrite=True)
    assert "test_xs" in registry.list_sizes("encoder")
    with pytest.raises(ValueError):
        registry.register("encoder", "test_xs", registry.ViTSize(32, 1, 2))
    with pytest.raises(KeyError, match="registered: tiny"):
        registry.get("encoder", "XXL")
    with pytest.raises(KeyError, match="valid: encoder"):
        registry.list_sizes("vae")


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("heads_read", ["pre_bottleneck", "bottleneck"])
def test_tiny_recipe_forward_backward(recipe, heads_read):
    cfg = small.tokenizer(recipe=recipe, heads_read=heads_read, batch_size=8)
    torch.manual_seed(0)
    model = Tokenizer(cfg)
    teacher = Teacher(model) if model.lambda_ssl else None
    active = active_objectives(model)
    assert ("clip" in active) == bool(RECIPES[recipe][0]) and ("ssl" in active) == bool(RECIPES[recipe][1])
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=64))
    caps = CaptionTable(CLASS_NAMES, model.text.size.context_length) if "clip" in active else None
    batch = make_batch(cfg, imgs, labels, 0, active, caps)
    z = model.encode(batch["rec_images"])
    assert z.shape == (len(z), cfg.latent_channels, 8, 8)
    assert model.decode(z).shape == batch["rec_images"].shape
    losses = step_losses(model, teacher, batch, 0.04)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
