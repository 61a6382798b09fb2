"""A DiT training step's memory on one GPU: the memory plan of the `dit` stage.

The same model as the tokenizer's (`vtp_core.memory`, whose docstring says what is counted and how): bytes
saved for backward by `flow.training_loss` on the meta device (bf16 autocast, flash SDPA and fused RMSNorm as
on CUDA), measured at depth 1 with per-block attribution and calibrated at two small per-GPU batches, plus
the fixed bytes: fp32 parameters, gradients, AdamW's two states, the EMA copy (the whole model), autocast's
bf16 weights and DDP's buckets. The batch: under DDP every rank holds the global batch's latents and noise
(`train.global_step_loss` draws them for the whole batch, then slices), so two global-batch copies; the flow
loss is per sample, so micro-batches need no gradient caching.
"""
from __future__ import annotations

import dataclasses

import torch

from dit_eval.config import DiTSpec
from dit_eval.flow import training_loss
from dit_eval.models import DiT
from dit_eval.sizes import get_size
from vtp_core import memory as core

CALIBRATION_IMAGES = (2, 4)  # no sample-drop in the DiT: any two small batches give the exact line


def measure(spec: DiTSpec, latent_shape: tuple[int, int, int], n: int, dtype: torch.dtype = torch.bfloat16,
            device: str | torch.device = "meta", depth: int | None = None, kernels: str = "cuda") -> dict:
    """{'other', 'calls', 'batch'} bytes of one training-loss forward on `n` latents (`core.measure`'s format);
    `depth` overrides the size's depth (1 for the extrapolation)."""
    device = torch.device(device)
    c, h, w = latent_shape
    size = get_size(spec.size)
    if depth is not None:
        size = dataclasses.replace(size, depth=depth)
    torch.manual_seed(0)
    with torch.device(device):
        model = DiT(size, c, h, spec.num_classes, spec.class_dropout)
    model.train()
    x1 = torch.randn(n, c, h, w, device=device)
    y = torch.zeros(n, dtype=torch.long, device=device)
    keys, batch_bytes = core.input_keys([x1, y])
    other, calls = core.count_saved(lambda: training_loss(model, x1, y, spec.t_mu, spec.t_sigma), {"dit": model},
                                    core._param_keys(model) | keys, device, dtype, kernels)
    return {"other": other, "calls": calls, "batch": batch_bytes}


def saved_bytes(spec: DiTSpec, latent_shape: tuple[int, int, int], n: int, dtype: torch.dtype = torch.bfloat16,
                extrapolate: bool = True) -> int:
    """Bytes saved for backward by the training loss on `n` latents (meta device), depth-extrapolated or not."""
    depth = get_size(spec.size).depth
    m = measure(spec, latent_shape, n, dtype, depth=1 if extrapolate else None)
    scale = depth if extrapolate else 1
    return int(m["other"] + sum(scale * saved for _, saved, _ in m["calls"]))


def calibrate(spec: DiTSpec, latent_shape: tuple[int, int, int], dtype: torch.dtype = torch.bfloat16) -> dict:
    """The DiT step's memory model (JSON-able, `core.calibrate`'s format with one objective, 'dit')."""
    with torch.device("meta"):
        model = DiT(get_size(spec.size), latent_shape[0], latent_shape[1], spec.num_classes, spec.class_dropout)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ema = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    fixed = {"params": 4.0 * params, "grads": 4.0 * params, "adamw": 8.0 * params, "ema": float(ema),
             "bf16_weights": 2.0 * sum(p.numel() for p in model.parameters() if p.requires_grad and p.dim() >= 2)}
    points = []
    for n in CALIBRATION_IMAGES:
        m = measure(spec, latent_shape, n, dtype, depth=1)
        points.append({"other": m["other"], "batch": m["batch"],
                       "calls": [{"tower": t, "saved": s, "input": i} for t, s, i in m["calls"]]})
    obj = {"points": points, "depth": {"dit": get_size(spec.size).depth}, "global_loss": 0.0,
           "global_n": spec.batch_size, "gradcache_per_image": 0.0}
    return {"version": core.MEMORY_VERSION, "dtype": str(dtype).removeprefix("torch."), "n": list(CALIBRATION_IMAGES),
            "fixed": fixed, "objectives": {"dit": obj}}


def predict(spec: DiTSpec, world_size: int, strategy: str, model: dict) -> dict:
    """Per-GPU peak memory of one DiT step in GB by component, with 'total' (`core.predict_from`)."""
    return core.predict_from(model, {"dit": spec.batch_size / world_size}, world_size, strategy,
                             {"dit": spec.batch_size}, 2)


def strategies(spec: DiTSpec, world_size: int) -> list[str]:
    """Only `none`: the DiT trainer has no checkpointing or micro-batches (the fixed-spec DiT-B/1 fits an 80 GB
    GPU with room to spare); a DiT that does not fit is refused by the plan."""
    return ["none"]


def choose(spec: DiTSpec, world_size: int, gpu_mem_gb: float, model: dict) -> str | None:
    return core.choose_from(strategies(spec, world_size), lambda s: predict(spec, world_size, s, model), gpu_mem_gb)
