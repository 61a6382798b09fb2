"""DINOv3-style ViT encoder with a linear bottleneck, and the shared RoPE transformer stack.

Why this shape (docs/method.md#encoder, #latent): patch conv, one CLS token, no absolute position embedding,
axial 2D RoPE (base 100, centred coords in [-1, 1]) on patch tokens only, pre-norm blocks with
RMSNorm + SwiGLU + SDPA. The latent is `Linear(D->c, bias=False)` on the final-norm patch tokens,
deterministic (no KL/noise). Blocks are timm's `EvaBlock` math (`vtp_core.models.layers`: nn.Linear, timm
SwiGLU, SDPA) and RoPE is timm's `RotaryEmbeddingDinoV3` table with timm's rotate-half pairing, the released
VTP convention.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_

from vtp_core.models.layers import Block, RmsNorm, dinov3_rope, run_blocks
from vtp_core.registry import ViTSize, swiglu_hidden


def init_weights(module: nn.Module) -> None:
    """trunc_normal(0.02) for Linear weights, zero biases (DINOv3 / timm ViT)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class RopeStack(nn.Module):
    """N pre-norm blocks sharing one axial 2D RoPE over an (h, w) token grid after `n_prefix` tokens."""

    def __init__(self, size: ViTSize, norm: str, n_prefix: int, rope_base: float = 100.0, qkv_bias: str = "qkv",
                 qk_norm: bool = False):
        super().__init__()
        norm_layer = functools.partial(RmsNorm, eps=1e-5) if norm == "rms" else functools.partial(LayerNorm, eps=1e-6)
        self.head_dim, self.heads, self.n_prefix, self.rope_base = size.width // size.heads, size.heads, n_prefix, rope_base
        hidden = swiglu_hidden(size.width, size.mlp_ratio)
        self.blocks = nn.ModuleList(Block(size.width, size.heads, hidden, norm_layer, qkv_bias, qk_norm)
                                    for _ in range(size.depth))
        self.norm = norm_layer(size.width)
        self.checkpoint_blocks = False  # `layers.set_activation_checkpointing`

    def forward(self, x: torch.Tensor, hw: tuple[int, int], drop_rate: float = 0.0) -> torch.Tensor:
        rope = dinov3_rope(self.head_dim, tuple(hw), self.rope_base, self.n_prefix, x.device)
        return self.norm(run_blocks(self.blocks, x, self.checkpoint_blocks, rope=rope, drop_rate=drop_rate))


class ViTEncoder(nn.Module):
    """Image (B,3,H,W) -> final-norm tokens [CLS | patches] (B, 1+N, D); `bottleneck` maps D -> c."""

    def __init__(self, size: ViTSize, patch: int, latent_channels: int, in_chans: int = 3, rope_base: float = 100.0,
                 qkv_bias: str = "qkv", qk_norm: bool = False):
        super().__init__()
        self.size, self.patch, self.width = size, patch, size.width
        self.patch_embed = nn.Conv2d(in_chans, size.width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, size.width))
        self.mask_token = nn.Parameter(torch.zeros(1, size.width))  # iBOT: replaces masked patch embeddings
        self.trunk = RopeStack(size, "rms", n_prefix=1, rope_base=rope_base, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.bottleneck = nn.Linear(size.width, latent_channels, bias=False)
        self.apply(init_weights)
        bound = (1.0 / (in_chans * patch * patch)) ** 0.5
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        nn.init.uniform_(self.patch_embed.bias, -bound, bound)
        nn.init.normal_(self.cls_token, std=0.02)

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               drop_rate: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
        """Final-norm tokens (B, 1+h*w, D) and the grid (h, w). `mask` (B, h*w) bool: True = masked.
        `drop_rate`: sample-drop stochastic depth of every block while training (`layers.Block`)."""
        p = self.patch_embed(x)
        hw = (p.shape[-2], p.shape[-1])
        p = p.flatten(2).transpose(1, 2)
        if mask is not None:
            p = torch.where(mask.unsqueeze(-1), self.mask_token.to(p.dtype).unsqueeze(0), p)
        t = torch.cat([self.cls_token.expand(p.shape[0], -1, -1).to(p.dtype), p], dim=1)
        return self.trunk(t, hw, drop_rate), hw

    def encode(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        """Latent (B, c, H/p, W/p): bottleneck of the final-norm patch tokens."""
        t, (h, w) = self.tokens(x, drop_rate=drop_rate)
        z = self.bottleneck(t[:, 1:])
        return z.transpose(1, 2).reshape(z.shape[0], -1, h, w)


class PixelDecoder(nn.Module):
    """Latent (B,c,h,w) -> pixels (B,3,h*p,w*p): 1x1 conv, RoPE ViT (LayerNorm), 1x1 conv, PixelShuffle."""

    def __init__(self, size: ViTSize, patch: int, latent_channels: int, out_chans: int = 3, rope_base: float = 100.0,
                 qkv_bias: str = "qkv"):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, size.width, 1)
        self.stack = RopeStack(size, "layer", n_prefix=0, rope_base=rope_base, qkv_bias=qkv_bias)
        self.conv_out = nn.Conv2d(size.width, out_chans * patch * patch, 1)
        self.shuffle = nn.PixelShuffle(patch)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        # the 1x1 convs as per-token Linears on their own weights: the stream stays token-major (B, N, D)
        t = F.linear(z.flatten(2).transpose(1, 2), self.conv_in.weight.flatten(1), self.conv_in.bias)
        t = self.stack(t, (h, w))
        y = F.linear(t, self.conv_out.weight.flatten(1), self.conv_out.bias)
        # PixelShuffle of the channel-major map, done from the token-major y in one copy instead of two:
        # channel c*p*p + i*p + j of token (r, s) is pixel (c, r*p + i, s*p + j)
        p, b = self.shuffle.upscale_factor, y.shape[0]
        return y.view(b, h, w, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h * p, w * p)
