"""Small configs for tests: the embedded demo's sizes.

The config defaults are the VTP method's values (ViT-L, batch 16k, 224/96 crops, K = 65536, LightningDiT-B/1 for
100k steps...), sized for GPU clusters. Tests build what they need from these instead, overriding a field or two.
"""
from __future__ import annotations

import dataclasses

from dit_eval.config import DiTSpec, ExtractorConfig, LatentsConfig, RefStatsConfig, SampleConfig
from vtp_core.config import DataConfig, ProbeConfig, TokenizerConfig

DATA = DataConfig(dataset="fashion_mnist", image_size=32)

TOKENIZER = TokenizerConfig(
    encoder="tiny", decoder="tiny", text="tiny", patch=4, latent_channels=8, qk_norm=False, qkv_bias="qv",
    batch_size=64, n_local_crops=2, global_crop=24, local_crop=16, dino_prototypes=256, dino_hidden=256,
    dino_bottleneck=64, clip_drop_rate=0.0, ssl_drop_rate=0.0, rec_loss="l1", lr=1e-3, weight_decay=0.05,
    adam_eps=1e-8, warmup_steps=10, warmup_fraction=0.5, steps=100, ckpt_every=50, log_every=10, data=DATA)

DIT = DiTSpec(size="tiny", steps=1000, batch_size=64, lr=2e-3, ema=0.99, t_mu=-0.5, t_sigma=1.25, num_classes=10,
              ckpt_every=200, log_every=50)
SAMPLE = SampleConfig(n_samples=1000, steps=25, shift=0.3, shard_size=250, batch_size=250)
LATENTS = LatentsConfig(data=DATA, n_images=10000, stats_subset=10000)
REFSTATS = RefStatsConfig(data=DATA, split="test", n_images=2000)
PROBE = ProbeConfig(n_train=2000, n_test=1000, data=DATA)
EXTRACTOR = ExtractorConfig(name="fmnist_cnn")


def data(**kw) -> DataConfig:
    return dataclasses.replace(DATA, **kw)


def tokenizer(**kw) -> TokenizerConfig:
    return dataclasses.replace(TOKENIZER, **kw)


def dit(**kw) -> DiTSpec:
    return dataclasses.replace(DIT, **kw)


def sample(**kw) -> SampleConfig:
    return dataclasses.replace(SAMPLE, **kw)


def latents(**kw) -> LatentsConfig:
    return dataclasses.replace(LATENTS, **kw)


def refstats(**kw) -> RefStatsConfig:
    return dataclasses.replace(REFSTATS, **kw)


def probe(**kw) -> ProbeConfig:
    return dataclasses.replace(PROBE, **kw)


def extractor(**kw) -> ExtractorConfig:
    return dataclasses.replace(EXTRACTOR, **kw)
