"""What a cell costs: FLOPs per training step and per forward pass (measured by torch.utils.flop_counter
on the meta device, on the stages' own modules), parameter counts, image counts of the data, and the memory
model of a pretrain step (`vtp_core.memory`: bytes saved for backward, counted on the meta device).

Measuring a step takes ~1 s per distinct model config, so results are memoized in-process and
persisted in a small JSON cache (`$VTP_CACHE`, default `~/.cache/vtp-scaling/costs.json`) keyed by
the versioned config and `COSTS_VERSION`: a 10,000-cell study re-plans in about a second, and a new
config is measured once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from dit_eval.config import DiTSpec, SampleConfig
from vtp_core.cfg import versioned_dict
from vtp_core.config import TokenizerConfig

COSTS_VERSION = 3  # bump when what a measurement counts changes (3: the Inception pass includes the sFID slice)


def _cache_path() -> Path:
    return Path(os.environ.get("VTP_CACHE", Path.home() / ".cache" / "vtp-scaling")) / "costs.json"


@functools.lru_cache(maxsize=1)
def _disk() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _cached(kind: str, key_obj: Any, compute: Callable[[], Any], as_json: bool = False) -> Any:
    """`compute()` once per key, on disk: a float, or with `as_json` any JSON value (returned as stored)."""
    key = hashlib.sha256(json.dumps([kind, COSTS_VERSION, key_obj], sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = _disk()
    if key not in cache:
        cache[key] = compute() if as_json else float(compute())
        try:
            from vtp_core.runtime import atomic_write_json

            atomic_write_json(_cache_path(), cache)
        except OSError:
            pass  # a read-only home only costs speed
    return cache[key]


def _strip(cfg: TokenizerConfig) -> TokenizerConfig:
    """Per-step FLOPs do not depend on steps, seed or the data's identity and size: share one measurement."""
    return dataclasses.replace(cfg, steps=1, seed=0, data=dataclasses.replace(
        cfg.data, n_train=0, subset_seed=0, checksum=""))


def _count(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@functools.lru_cache(maxsize=None)
def _tok(kind: str, cfg: TokenizerConfig) -> float:
    def measure() -> float:  # imports torch + the models only on a cache miss
        from vtp_core import flops

        return {"step": lambda: flops.train_step_flops(cfg)["total"], "params": lambda: flops.encoder_params(cfg),
                "encode": lambda: flops.encode_flops(cfg), "decode": lambda: _decode_flops(cfg)}[kind]()

    return _cached(f"tok-{kind}", versioned_dict(cfg), measure)


def _decode_flops(cfg: TokenizerConfig) -> float:
    import torch

    from vtp_core import registry
    from vtp_core.models.vit import PixelDecoder

    with torch.device("meta"):
        dec = PixelDecoder(registry.get("decoder", cfg.decoder), cfg.patch, cfg.latent_channels, qkv_bias=cfg.qkv_bias)
    c, h, w = latent_shape(cfg)
    with torch.no_grad():
        return _count(lambda: dec(torch.empty(1, c, h, w, device="meta")))


def tokenizer_step_flops(cfg: TokenizerConfig) -> float:
    return _tok("step", _strip(cfg))


@functools.lru_cache(maxsize=None)
def _tokenizer_memory(cfg: TokenizerConfig) -> dict:
    def measure() -> dict:
        from vtp_core import memory

        return memory.calibrate(cfg)

    from vtp_core.memory import MEMORY_VERSION

    return _cached("tok-memory", [MEMORY_VERSION, versioned_dict(cfg)], measure, as_json=True)


def tokenizer_memory(cfg: TokenizerConfig) -> dict:
    """The memory model of a pretrain step (`vtp_core.memory.calibrate`: fixed bytes + per-objective affine
    activations + the global-batch losses), measured once per config on the meta device (~2 s at ViT-L) and
    cached like the FLOPs; `vtp_core.memory.predict/choose` turn it into GB per GPU for a world size."""
    return _tokenizer_memory(_strip(cfg))


def encoder_params(cfg: TokenizerConfig) -> int:
    return int(_tok("params", _strip(cfg)))


def encoder_forward_flops(cfg: TokenizerConfig) -> float:
    """Encoder+bottleneck forward FLOPs for one image (latent extraction cost)."""
    return _tok("encode", _strip(cfg))


def decoder_forward_flops(cfg: TokenizerConfig) -> float:
    """Pixel-decoder forward FLOPs for one latent (sampling and rFID decode cost)."""
    return _tok("decode", _strip(cfg))


@functools.lru_cache(maxsize=None)
def dit_step_flops(spec: DiTSpec, latent_shape: tuple[int, int, int]) -> float:
    def measure() -> float:
        from dit_eval import flops

        return flops.dit_train_step_flops(spec, latent_shape)

    return _cached("dit-step", [versioned_dict(spec), list(latent_shape)], measure)


@functools.lru_cache(maxsize=None)
def dit_memory(spec: DiTSpec, latent_shape: tuple[int, int, int]) -> dict:
    """The memory model of a DiT step (`dit_eval.memory.calibrate`), measured once per spec and latent shape."""
    def measure() -> dict:
        from dit_eval import memory

        return memory.calibrate(spec, latent_shape)

    from vtp_core.memory import MEMORY_VERSION

    return _cached("dit-memory", [MEMORY_VERSION, versioned_dict(spec), list(latent_shape)], measure, as_json=True)


@functools.lru_cache(maxsize=None)
def dit_forward_flops(spec: DiTSpec, latent_shape: tuple[int, int, int]) -> float:
    """One velocity evaluation of one sample (a sampler step without guidance)."""
    def measure() -> float:
        import torch

        from dit_eval.models import create_dit

        c, h, w = latent_shape
        with torch.device("meta"):
            model = create_dit(spec.size, c, h, spec.num_classes, spec.class_dropout).eval()
            x, t, y = torch.empty(1, c, h, w), torch.empty(1), torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            return _count(lambda: model(x, t, y))

    return _cached("dit-fwd", [spec.size, spec.num_classes, list(latent_shape)], measure)


# the dry run's assumption for dopri5's drift evaluations per sample (the sample stage records the real count):
# adaptive solvers at rtol 1e-3 on ImageNet-scale flows take on the order of a hundred
DOPRI5_NFE_PLAN = 100


def sample_model_passes(cfg: SampleConfig) -> float:
    """DiT forward passes per sample the sampler is expected to make: Euler's steps − 1, dopri5's planned NFE;
    a guided evaluation (t ≥ cfg_interval_start) is two passes (dit_eval/sample.py)."""
    guided = cfg.cfg_scale != 1.0
    if cfg.sampler == "euler":
        s = cfg.shift
        grid = [i / (cfg.steps - 1) for i in range(cfg.steps - 1)]  # the grid points an update starts from
        grid = [s * t / (1 + (s - 1) * t) for t in grid] if s not in (0, 1) else grid
        return float(len(grid) + (sum(t >= cfg.cfg_interval_start for t in grid) if guided else 0))
    return DOPRI5_NFE_PLAN * ((2 - cfg.cfg_interval_start) if guided else 1)


@functools.lru_cache(maxsize=None)
def extractor_forward_flops(name: str) -> float:
    """FLOPs of one image through a metric's feature extractor at its input size (`dinov2`: ViT-L/14 at 224 px,
    the architecture FD-DINOv2 uses; the Inception's sFID slice and logits add ~1.5 %, counted in its pass)."""
    def measure() -> float:
        import torch

        with torch.device("meta"):
            if name == "inception":
                from dit_eval.inception import FIDInceptionV3

                net, x = FIDInceptionV3().forward_all, torch.empty(1, 3, 299, 299)  # the pass every metric reads
            elif name == "dinov2":
                import timm

                net, x = timm.create_model("vit_large_patch14_dinov2", img_size=224, num_classes=0), torch.empty(1, 3, 224, 224)
            else:
                from dit_eval.extractors import FMnistCNN

                net, x = FMnistCNN(), torch.empty(1, 1, 32, 32)
        with torch.no_grad():
            return _count(lambda: net(x))

    return _cached("extractor-fwd", name, measure)


def precision_recall_flops(n_samples: int, n_reference: int, dim: int) -> float:
    """FLOPs of the k-NN precision/recall: the pairwise distances of samples x samples, reference x reference
    and samples x reference (each pair ~2·dim FLOPs as one matrix product row)."""
    return 2.0 * dim * (n_samples ** 2 + n_reference ** 2 + 2 * n_samples * n_reference)


def latent_shape(cfg: TokenizerConfig) -> tuple[int, int, int]:
    side = cfg.data.image_size // cfg.patch
    return (cfg.latent_channels, side, side)
