"""SSL views on tensors: random-resized crops + flips (batched `affine_grid`) and iBOT block masks.

Every draw comes from an explicit `torch.Generator`, so a step's views are a pure function of (seed, step)
and resume is exact. The draws are split from the pixels (`crop_draws` / `crop_from`, `mask_plan` /
`block_mask`) so that a rank can make the views of its own slice of a batch and get exactly what the whole
batch would have given it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def crop_draws(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 5) uniforms, one row per crop: area, log-aspect, centre x, centre y, flip (see `crop_from`)."""
    return torch.rand(n, 5, generator=g)


def crop_from(x: torch.Tensor, size: int, u: torch.Tensor, scale: tuple[float, float],
              ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,size,size): per image a crop of area fraction ~U(scale), log-uniform aspect, h-flip,
    from its row of uniforms `u` (B, 5) (`crop_draws`). The draws are data: a crop is a function of its row,
    so any slice of a batch gets the crops the whole batch would."""
    area = scale[0] + u[:, 0] * (scale[1] - scale[0])
    r = (math.log(ratio[0]) + u[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))).exp()
    sw = (area * r).sqrt().clamp(max=1.0)  # crop width / image width
    sh = (area / r).sqrt().clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - sw)  # centre in [-1, 1] so the crop stays inside
    cy = (u[:, 3] * 2 - 1) * (1 - sh)
    flip = torch.where(u[:, 4] < flip_p, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta.to(x), [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> torch.Tensor:
    """`crop_from` with fresh draws from `g`."""
    return crop_from(x, size, crop_draws(x.shape[0], g), scale, ratio, flip_p)


def multi_crop(x: torch.Tensor, g: torch.Generator, global_size: int, local_size: int, n_local: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """2 global views (2B,...) ordered [view0 of all images, view1 of all images] and n_local local views."""
    glob = torch.cat([random_resized_crop(x, global_size, global_scale, g) for _ in range(2)])
    loc = [random_resized_crop(x, local_size, local_scale, g) for _ in range(n_local)]
    loc = torch.cat(loc) if loc else x.new_zeros(0, x.shape[1], local_size, local_size)
    return glob, loc


def mask_plan(n: int, g: torch.Generator, ratio: tuple[float, float] = (0.1, 0.5),
              probability: float = 0.5) -> torch.Tensor:
    """(n,) mask ratio of each of n crops (0 = no mask), DINOv2's plan: int(n*probability) crops, in a random
    order, get ratios linearly spaced over `ratio`."""
    out = torch.zeros(n)
    n_masked = int(n * probability)
    order = torch.randperm(n, generator=g)[:n_masked]
    lo, hi = ratio
    for j, i in enumerate(order.tolist()):
        out[i] = lo + (hi - lo) * (j / max(n_masked - 1, 1))
    return out


def block_mask(h: int, w: int, frac: float, g: torch.Generator, min_block: int = 2) -> torch.Tensor:
    """(h*w,) bool: random rectangles (BEiT block masking) covering round(frac*h*w) patches, never more."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    target = int(round(frac * h * w))
    for _ in range(10 * h * w):
        left = target - int(mask.sum())
        if left <= 0:
            break
        area = float(torch.empty(1).uniform_(min(min_block, left), max(min(left, h * w * 0.5), min_block), generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g)))
        bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
        bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
        top = int(torch.randint(0, h - bh + 1, (1,), generator=g))
        lft = int(torch.randint(0, w - bw + 1, (1,), generator=g))
        region = mask[top:top + bh, lft:lft + bw]
        if int((~region).sum()) <= left:  # never overshoot the target
            region.fill_(True)
        else:
            free = (~region).flatten().nonzero().squeeze(1)[:left]
            flat = region.flatten().clone()
            flat[free] = True
            mask[top:top + bh, lft:lft + bw] = flat.view(bh, bw)
    return mask.flatten()


def block_masks(n: int, h: int, w: int, g: torch.Generator, ratio: tuple[float, float] = (0.1, 0.5),
                probability: float = 0.5, min_block: int = 2) -> torch.Tensor:
    """(n, h*w) bool iBOT masks of n crops: `mask_plan`, then each masked crop's `block_mask` from `g`."""
    plan = mask_plan(n, g, ratio, probability)
    masks = torch.zeros(n, h * w, dtype=torch.bool)
    for i in plan.nonzero().squeeze(1).tolist():
        masks[i] = block_mask(h, w, float(plan[i]), g, min_block)
    return masks
