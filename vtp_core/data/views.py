"""SSL views on tensors: random-resized crops + flips (batched `affine_grid`) and iBOT block masks.

Why in torch on whole batches: on CPU a per-image PIL pipeline would cost more than the tiny model's
step; every draw comes from an explicit `torch.Generator`, so a step's views are a pure function of
(seed, step) and resume is exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,size,size): per-image crop of area fraction ~U(scale), log-uniform aspect, h-flip."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = logr.exp()
    sw = (area * r).sqrt().clamp(max=1.0)  # crop width / image width
    sh = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)  # centre in [-1, 1] so the crop stays inside
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b, generator=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta.to(x), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def multi_crop(x: torch.Tensor, g: torch.Generator, global_size: int, local_size: int, n_local: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """2 global views (2B,...) ordered [view0 of all images, view1 of all images] and n_local local views."""
    glob = torch.cat([random_resized_crop(x, global_size, global_scale, g) for _ in range(2)])
    loc = [random_resized_crop(x, local_size, local_scale, g) for _ in range(n_local)]
    loc = torch.cat(loc) if loc else x.new_zeros(0, x.shape[1], local_size, local_size)
    return glob, loc


def block_masks(n: int, h: int, w: int, g: torch.Generator, ratio: tuple[float, float] = (0.1, 0.5),
                probability: float = 0.5, min_block: int = 2) -> torch.Tensor:
    """(n, h*w) bool iBOT masks (DINOv2): int(n*probability) images get a ratio linearly spaced over
    `ratio`, filled with random rectangles (BEiT block masking); the others get no mask."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    n_masked = int(n * probability)
    order = torch.randperm(n, generator=g)[:n_masked]
    lo, hi = ratio
    for j, i in enumerate(order.tolist()):
        frac = lo + (hi - lo) * (j / max(n_masked - 1, 1))
        target = int(round(frac * h * w))
        for _ in range(10 * h * w):
            left = target - int(masks[i].sum())
            if left <= 0:
                break
            area = float(torch.empty(1).uniform_(min(min_block, left), max(min(left, h * w * 0.5), min_block),
                                                 generator=g))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g)))
            bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
            bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, h - bh + 1, (1,), generator=g))
            lft = int(torch.randint(0, w - bw + 1, (1,), generator=g))
            region = masks[i, top:top + bh, lft:lft + bw]
            if int((~region).sum()) <= left:  # never overshoot the target
                region.fill_(True)
            else:
                free = (~region).flatten().nonzero().squeeze(1)[:left]
                flat = region.flatten().clone()
                flat[free] = True
                masks[i, top:top + bh, lft:lft + bw] = flat.view(bh, bw)
    return masks.view(n, h * w)
