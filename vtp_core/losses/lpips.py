"""LPIPS (VGG16, Zhang et al. 2018) from a user-supplied weights file, checked by sha256.

Why user-supplied: nothing may download at run time, and the weights identify the loss, so the
file's sha256 is a versioned config field (`lpips_sha256`) while its path is not. Without weights
the perceptual term is off and the trainer says so in the log (never silently).

File format (torch.save, weights_only): {"features.<i>.weight"/".bias": torchvision VGG16 `features`
conv weights, "lin.<k>.weight": (1, C_k, 1, 1) LPIPS linear heads for the 5 slices}.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.runtime import StageError

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision indices
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """Frozen VGG16 + 1x1 linear heads; inputs in [-1, 1]; returns (B,) distances."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lin = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
            if i >= _TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = 0.0
        for lin, a, b in zip(self.lin, self._taps(x), self._taps(y)):
            a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
            d = d + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return d


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_lpips(cfg, log: logging.Logger, device: str | torch.device = "cpu") -> LPIPS | None:
    """The LPIPS net of `cfg.lpips_weights` (sha256 must equal `cfg.lpips_sha256`), or None with a warning."""
    if not cfg.lpips_weights:
        if cfg.lambda_lpips:
            log.warning("LPIPS term OFF: no VGG16 LPIPS weights configured (TokenizerConfig.lpips_weights + "
                        "lpips_sha256); L_rec = L1 only")
        return None
    path = Path(cfg.lpips_weights)
    if not path.is_file():
        raise StageError(f"TokenizerConfig.lpips_weights: {path} not found")
    digest = sha256_file(path)
    if digest != cfg.lpips_sha256:
        raise StageError(f"TokenizerConfig.lpips_sha256: {path} has sha256 {digest}, config says "
                         f"'{cfg.lpips_sha256}'")
    net = LPIPS()
    missing, unexpected = net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing or unexpected:
        raise StageError(f"{path}: not an LPIPS VGG16 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.to(device).eval()
