"""What a cell costs: FLOPs per training step (measured by the stages' own FLOPs modules), parameter
counts, and the dry-run time estimate. Memoized: the planner calls these once per distinct config,
so 10,000 cells plan in well under 2 s.
"""
from __future__ import annotations

import dataclasses
import functools

from dit_eval.config import DiTSpec
from vtp_core.config import TokenizerConfig


def _strip(cfg: TokenizerConfig) -> TokenizerConfig:
    """Per-step FLOPs do not depend on steps, seed or data size: share one measurement."""
    return dataclasses.replace(cfg, steps=1, seed=0, data=dataclasses.replace(cfg.data, n_train=0, subset_seed=0))


@functools.lru_cache(maxsize=None)
def _tok_step_flops(cfg: TokenizerConfig) -> float:
    from vtp_core import flops

    return float(flops.train_step_flops(cfg)["total"])


def tokenizer_step_flops(cfg: TokenizerConfig) -> float:
    return _tok_step_flops(_strip(cfg))


@functools.lru_cache(maxsize=None)
def encoder_params(cfg: TokenizerConfig) -> int:
    from vtp_core import flops

    return int(flops.encoder_params(_strip(cfg)))


@functools.lru_cache(maxsize=None)
def encoder_forward_flops(cfg: TokenizerConfig) -> float:
    """Encoder+bottleneck forward FLOPs for one image (latent extraction cost)."""
    from vtp_core import flops

    return float(flops.encode_flops(_strip(cfg)))


@functools.lru_cache(maxsize=None)
def dit_step_flops(spec: DiTSpec, latent_shape: tuple[int, int, int]) -> float:
    from dit_eval import flops

    return float(flops.dit_train_step_flops(spec, latent_shape))


def latent_shape(cfg: TokenizerConfig) -> tuple[int, int, int]:
    side = cfg.data.image_size // cfg.patch
    return (cfg.latent_channels, side, side)
