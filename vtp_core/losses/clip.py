"""Symmetric InfoNCE (OpenCLIP `ClipLoss`) with a learnable, clamped logit scale.

VTP uses softmax CLIP, not SigLIP (docs/method.md#text-tower-and-clip-loss); the scale starts at ln(1/0.07) and is
clamped at ln(100) as in OpenCLIP (applied in the forward, so the clamp is part of the graph).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGIT_SCALE_INIT = math.log(1 / 0.07)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
              max_logit_scale: float = math.log(100.0)) -> torch.Tensor:
    """½(CE(img->txt) + CE(txt->img)) over the batch; `img`, `txt` unnormalised (B, E)."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = logit_scale.float().clamp(max=max_logit_scale).exp() * img @ txt.t()
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
