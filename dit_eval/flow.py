"""Flow matching as trained by LightningDiT/SiT (docs/protocol.md#dit-training).

Why these exact choices: they are part of the fixed downstream protocol, so a gFID difference must
come from the tokenizer, never from the objective. Linear path x_t = t·x1 + (1−t)·x0 with t = 1 at
the data, velocity target x1 − x0, logit-normal timesteps (negative μ favours noisy t), and the
loss MSE + mean(1 − cos) where the cosine is over channels at each spatial position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_t(n: int, mu: float, sigma: float, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal timesteps t = sigmoid(N(mu, sigma)) in (0, 1), from the torch RNG (so resume is exact)."""
    return torch.sigmoid(mu + sigma * torch.randn(n, device=device, generator=generator))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t·x1 + (1−t)·x0 (x0 noise, x1 data)."""
    tt = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return tt * x1 + (1 - tt) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def flow_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((v−u)²) + mean(1 − cos(v, u)) with the cosine over dim 1 (channels), per position."""
    pred, target = pred.float(), target.float()
    mse = (pred - target).pow(2).mean()
    cos = F.cosine_similarity(pred, target, dim=1)
    return mse + (1 - cos).mean()


def training_loss(model, x1: torch.Tensor, y: torch.Tensor, mu: float, sigma: float) -> torch.Tensor:
    """One flow-matching loss on a batch of standardised latents x1 with labels y."""
    x0 = torch.randn_like(x1)
    t = sample_t(x1.shape[0], mu, sigma, device=x1.device)
    return flow_loss(model(interpolate(x0, x1, t), t, y), velocity_target(x0, x1))
