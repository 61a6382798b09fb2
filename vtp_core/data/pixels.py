"""The one pixel convention: uint8 NHWC <-> float NCHW in [-1, 1].

Why one function each way: rFID, latents, samples and reference statistics must quantise identically,
or FIDs drift by a rounding convention rather than by the tokenizer.
"""
from __future__ import annotations

import numpy as np
import torch


def normalize(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N,H,W,3) -> float32 (N,3,H,W) in [-1, 1] on `device`."""
    if isinstance(images, np.ndarray):  # read-only arrays (cached splits) are copied: torch wants writable memory
        images = np.ascontiguousarray(images) if images.flags.writeable else np.array(images)
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 NHWC images, got {t.dtype}")
    # the same float32 ops as t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0), the same numbers, in ~1/3 of
    # the time on a CPU: the layout changes on the uint8 bytes, then two in-place passes (bench/loader.py)
    return t.to(device).permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped)."""
    return x.add(1.0).mul(0.5).clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float (N,3,H,W) in [-1, 1] -> uint8 (N,H,W,3): clamp, x255, round half up. Inverse of `normalize`."""
    u = denormalize(x.detach().float()).mul(255.0).add(0.5).floor().to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().cpu().numpy()
