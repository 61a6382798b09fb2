"""LightningDiT, the fixed downstream generator (docs/protocol.md#dit-model), as a registry of sizes.

Why this exact architecture: the VTP scaling numbers are gFIDs of LightningDiT-B/1 (XL/1 for the
final table), so every block choice that changes the numbers is reproduced: SwiGLU MLP (hidden
int(2/3·4·D)), RMSNorm, 2D RoPE on q/k *plus* a frozen 2D sin-cos absolute position embedding,
adaLN-Zero with shift, class dropout with a null label (= num_classes), patch 1, no learned sigma.
Attention (SDPA + RoPE), SwiGLU (timm's) and RMSNorm are shared with the tokenizer (`vtp_core.models.layers`);
the RoPE (timm `RotaryEmbeddingCat`, interleaved pairs, as LightningDiT) and the sin-cos positions are timm's,
so only the wiring lives here.

Sizes are registered by name like timm (`tiny` is the CPU demo size; B/L/XL are the paper's).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import build_sincos2d_pos_embed

from vtp_core.models.layers import Attention, RmsNorm, SwiGLU, eva_rope

from dit_eval.sizes import DiTSize, get_size, list_sizes  # noqa: E402,F401  (re-exported: the registry)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with shift and scale (B, 1, D) per sample (one pass over x)."""
    return torch.addcmul(shift, x, 1 + scale)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t in [0, 1] (SiT passes t unscaled) followed by a 2-layer MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class DiTBlock(nn.Module):
    """Pre-norm block; adaLN-Zero produces (shift, scale, gate) for attention and MLP from c."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = RmsNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, rotate_half=False)
        self.norm2 = RmsNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, int(2 / 3 * 4 * dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
        x = torch.addcmul(x, g1, self.attn(modulate(self.norm1(x), sh1, sc1), rope))  # x + g1 * attn(...)
        return torch.addcmul(x, g2, self.mlp(modulate(self.norm2(x), sh2, sc2)))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = RmsNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Class-conditional velocity model v(x_t, t, y) on a (C, H, W) latent."""

    def __init__(self, size: DiTSize, in_chans: int, input_size: int, num_classes: int,
                 class_dropout: float = 0.1):
        super().__init__()
        d, p = size.width, size.patch
        if d % size.heads:
            raise ValueError(f"width {d} not divisible by heads {size.heads}")
        if input_size % p:
            raise ValueError(f"input_size {input_size} not divisible by patch {p}")
        self.size, self.in_chans, self.input_size, self.patch = size, in_chans, input_size, p
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.grid = input_size // p
        self.x_embedder = nn.Conv2d(in_chans, d, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(d)
        # one extra row: the null label used by class dropout and classifier-free guidance
        self.y_embedder = nn.Embedding(num_classes + 1, d)
        pos = build_sincos2d_pos_embed([self.grid, self.grid], dim=d)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # frozen, not learned
        self.blocks = nn.ModuleList(DiTBlock(d, size.heads) for _ in range(size.depth))
        self.final_layer = FinalLayer(d, p * p * in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: xavier linears, zero adaLN and output (adaLN-Zero: each block starts as identity)."""
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Training-time class dropout: replace a fraction of labels with the null label."""
        if self.training and self.class_dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return y

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, g = self.patch, self.grid
        # token-major (B, N, D) memory: a transposed residual stream would be copied at every Linear
        tok = self.x_embedder(x).flatten(2).transpose(1, 2).contiguous() + self.pos_embed.to(x.dtype)
        cond = self.t_embedder(t) + self.y_embedder(self.drop_labels(y))
        rope = eva_rope(self.size.width // self.size.heads, g, x.device)  # built once per grid and device
        for blk in self.blocks:
            tok = blk(tok, cond, rope)
        out = self.final_layer(tok, cond)  # (B, g*g, p*p*C)
        out = out.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, h, w)


def create_dit(size: str, in_chans: int, input_size: int, num_classes: int,
               class_dropout: float = 0.1) -> DiT:
    """Build a registered DiT size for latents of shape (in_chans, input_size, input_size)."""
    return DiT(get_size(size), in_chans, input_size, num_classes, class_dropout)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
