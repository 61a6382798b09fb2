"""What a cell costs: FLOPs per training step (measured by the stages' own FLOPs modules), parameter
counts, and the dry-run time estimate.

Measuring a step with torch.utils.flop_counter takes ~1 s per distinct model config, so results are
memoized in-process and persisted in a small JSON cache (`$VTP_CACHE`, default
`~/.cache/vtp-scaling/costs.json`) keyed by the versioned config and the FLOPs code version: a
10,000-cell study re-plans in about a second, and a new config is measured once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from dit_eval.config import DiTSpec
from vtp_core.cfg import versioned_dict
from vtp_core.config import TokenizerConfig

COSTS_VERSION = 1  # bump when vtp_core/flops.py or dit_eval/flops.py change what they count


def _cache_path() -> Path:
    return Path(os.environ.get("VTP_CACHE", Path.home() / ".cache" / "vtp-scaling")) / "costs.json"


@functools.lru_cache(maxsize=1)
def _disk() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _cached(kind: str, key_obj: Any, compute: Callable[[], float]) -> float:
    key = hashlib.sha256(json.dumps([kind, COSTS_VERSION, key_obj], sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = _disk()
    if key not in cache:
        cache[key] = float(compute())
        try:
            from vtp_core.runtime import atomic_write_json

            atomic_write_json(_cache_path(), cache)
        except OSError:
            pass  # a read-only home only costs speed
    return cache[key]


def _strip(cfg: TokenizerConfig) -> TokenizerConfig:
    """Per-step FLOPs do not depend on steps, seed or data size: share one measurement."""
    return dataclasses.replace(cfg, steps=1, seed=0, data=dataclasses.replace(cfg.data, n_train=0, subset_seed=0))


@functools.lru_cache(maxsize=None)
def _tok(kind: str, cfg: TokenizerConfig) -> float:
    def measure() -> float:  # imports torch + the models only on a cache miss
        from vtp_core import flops

        return {"step": lambda: flops.train_step_flops(cfg)["total"], "params": lambda: flops.encoder_params(cfg),
                "encode": lambda: flops.encode_flops(cfg)}[kind]()

    return _cached(f"tok-{kind}", versioned_dict(cfg), measure)


def tokenizer_step_flops(cfg: TokenizerConfig) -> float:
    return _tok("step", _strip(cfg))


def encoder_params(cfg: TokenizerConfig) -> int:
    return int(_tok("params", _strip(cfg)))


def encoder_forward_flops(cfg: TokenizerConfig) -> float:
    """Encoder+bottleneck forward FLOPs for one image (latent extraction cost)."""
    return _tok("encode", _strip(cfg))


@functools.lru_cache(maxsize=None)
def dit_step_flops(spec: DiTSpec, latent_shape: tuple[int, int, int]) -> float:
    def measure() -> float:
        from dit_eval import flops

        return flops.dit_train_step_flops(spec, latent_shape)

    return _cached("dit-step", [versioned_dict(spec), list(latent_shape)], measure)


def latent_shape(cfg: TokenizerConfig) -> tuple[int, int, int]:
    side = cfg.data.image_size // cfg.patch
    return (cfg.latent_channels, side, side)
