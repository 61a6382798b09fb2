"""Reconstruction loss L_rec = L1 + λ_lpips·LPIPS in [-1, 1] pixel space (the paper's eq. 1).

LPIPS needs VGG16 weights that must not be downloaded at run time: `TokenizerConfig.rec_loss: l1_lpips` (the
default) needs `lpips_weights` (a file made from the official torchvision VGG16 + lpips heads by
`python -m vtp_core.losses.lpips`) whose sha256 is `lpips_sha256`; a study without them must say
`rec_loss: l1`, and validation refuses it otherwise.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, lpips: nn.Module | None = None,
                        lambda_lpips: float = 1.0) -> dict[str, torch.Tensor]:
    """{'l1', 'lpips' (only if a network is given), 'rec' (their weighted sum)}."""
    out = {"l1": F.l1_loss(x_hat.float(), x.float())}
    out["rec"] = out["l1"]
    if lpips is not None:
        out["lpips"] = lpips(x_hat.float(), x.float()).mean()
        out["rec"] = out["rec"] + lambda_lpips * out["lpips"]
    return out
