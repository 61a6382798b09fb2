"""Fakes for dit_eval tests: a fixed random conv tokenizer and synthetic class-structured images,
so these tests never depend on vtp_core's models or on Fashion-MNIST."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class FakeTokenizer(nn.Module):
    """32x32x3 in [-1,1] <-> 8x8x8 latents: one stride-4 conv and its transpose, fixed random weights."""

    def __init__(self, channels: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Conv2d(3, channels, 4, stride=4)
        self.dec = nn.ConvTranspose2d(channels, 3, 4, stride=4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return torch.tanh(self.dec(z))


def fake_to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def synthetic_images(n: int, seed: int = 0, size: int = 32, classes: int = 10):
    """uint8 NHWC images whose content depends on the label (a bright square at a class position)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    imgs = rng.integers(0, 40, (n, size, size, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = (k // 4) * 8, (k % 4) * 8
        imgs[i, r:r + 8, c:c + 8] = 200 + rng.integers(0, 55)
    return imgs, labels
