"""Transformer pieces shared by the ViT tokenizer and the DiT, built from standard parts: `nn.Linear`,
RMSNorm as `F.rms_norm` in float32, timm's `SwiGLU`, `F.scaled_dot_product_attention`, and timm's 2D RoPE
tables (`RotaryEmbeddingDinoV3`, `RotaryEmbeddingCat`) applied with timm's `apply_rot_embed_cat`.

Why so plain: one code path serves eager mode and `torch.compile` (the tokenizer trainer compiles each block
on CUDA, `vtp_core.pretrain.compile_towers`), and activation checkpointing, FSDP-style hooks, CUDA and new
torch versions all see ordinary modules and ops: no custom autograd, no hand-written kernels, no private ops.
The RoPE table of a grid is built once per (grid, device) outside the blocks and passed in as a tensor,
so a compiled block treats it as an input.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, SwiGLU, apply_rot_embed_cat

from vtp_core.config import QKV_BIAS

__all__ = ["Attention", "Block", "RmsNorm", "SwiGLU", "dinov3_rope", "eva_rope", "run_blocks", "sample_drop_add",
           "set_activation_checkpointing"]


def run_blocks(blocks, x: torch.Tensor, checkpointed: bool = False, **kwargs) -> torch.Tensor:
    """x through `blocks` in order (each called as block(x, **kwargs)). `checkpointed`: while autograd records,
    each block runs under `torch.utils.checkpoint` (non-reentrant): it keeps its input, not its interior, and
    runs again in backward with the RNG state it had (sample-drop draws replay), so the numbers are the same."""
    record = checkpointed and torch.is_grad_enabled()
    for blk in blocks:
        x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False, **kwargs) if record else blk(x, **kwargs)
    return x


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Switch `run_blocks` checkpointing on or off in every block stack of `model` (the modules that carry a
    `checkpoint_blocks` flag)."""
    for m in model.modules():
        if hasattr(m, "checkpoint_blocks"):
            m.checkpoint_blocks = bool(on)


@functools.lru_cache(maxsize=64)
def dinov3_rope(head_dim: int, hw: tuple[int, int], base: float, n_prefix: int, device: torch.device) -> torch.Tensor:
    """timm's `RotaryEmbeddingDinoV3(rotate_half=True)` table (DINOv3 coordinates, periods base^(4i/hd)) of an
    (h, w) grid after `n_prefix` tokens, as (n_prefix + h*w, 2*hd) = [sin | cos] for
    `apply_rot_embed_cat(x, table, half=True)`. The prefix (CLS) rows have sin 0 and cos 1: not rotated."""
    with torch.device("cpu"):  # built on CPU (also under a `meta` default device), then moved
        emb = RotaryEmbeddingDinoV3(head_dim, temperature=base, rotate_half=True).get_embed(list(hw)).float()
        if n_prefix:
            prefix = torch.cat([torch.zeros(n_prefix, head_dim), torch.ones(n_prefix, head_dim)], -1)
            emb = torch.cat([prefix, emb])
    return emb.to(device)


@functools.lru_cache(maxsize=64)
def eva_rope(head_dim: int, grid: int, device: torch.device) -> torch.Tensor:
    """LightningDiT's 2D RoPE: timm's `RotaryEmbeddingCat` table on a grid x grid token map, (grid*grid, 2*hd)
    = [sin | cos] for `apply_rot_embed_cat(x, table)` (interleaved pairs)."""
    with torch.device("cpu"):
        emb = RotaryEmbeddingCat(dim=head_dim, in_pixels=False, feat_shape=[grid, grid]).get_embed().float()
    return emb.to(device)


class RmsNorm(nn.Module):
    """RMSNorm over the last dim with a learned scale, computed in float32 (timm `RmsNormFp32` numerics, torch's
    `F.rms_norm`) and cast back to the input's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv `nn.Linear`, RoPE on q and k (`apply_rot_embed_cat`), SDPA, `proj`.
    `qkv_bias`: "qkv" biases on q, k and v (the released VTP/DINOv3 blocks); "qv" learnable q and v biases with
    the k bias fixed at zero (EVA); "none". `qk_norm`: RMSNorm over the head dim on q and k (a learned scale
    each), before RoPE, as the VTP paper's QKNorm. `rotate_half`: the RoPE pairing, channel i with i + hd/2
    (DINOv3, the tokenizer) or 2i with 2i+1 (EVA / LightningDiT)."""

    def __init__(self, dim: int, heads: int, qkv_bias: str = "qkv", qk_norm: bool = False, rotate_half: bool = True):
        super().__init__()
        if qkv_bias not in QKV_BIAS:
            raise ValueError(f"qkv_bias={qkv_bias!r}; valid: {', '.join(QKV_BIAS)}")
        self.heads, self.rotate_half = heads, rotate_half
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        self.q_bias = self.v_bias = None
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.q_norm = RmsNorm(dim // heads, eps=1e-5) if qk_norm else None
        self.k_norm = RmsNorm(dim // heads, eps=1e-5) if qk_norm else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        bias = self.qkv.bias if self.q_bias is None else torch.cat([self.q_bias, self.k_bias, self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        qk, v = qkv[:2], qkv[2]  # (2, B, H, N, hd) and (B, H, N, hd)
        if self.q_norm is not None:
            qk = torch.stack([self.q_norm(qk[0]), self.k_norm(qk[1])])
        if rope is not None:  # q and k rotated in one pass
            qk = apply_rot_embed_cat(qk, rope, half=self.rotate_half)
        x = F.scaled_dot_product_attention(qk[0], qk[1], v, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm block x + attn(norm1(x)), x + mlp(norm2(x)) as timm's EvaBlock with SwiGLU (no layer scale),
    with DINOv2's sample-drop stochastic depth: while training with `drop_rate` r > 0, each residual branch
    runs on a random subset of keep = max(1, int(B·(1-r))) samples and is added back scaled by B/keep (the
    others skip it). The subset comes from torch's global generator, which checkpoints save."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, norm_layer, qkv_bias: str = "qkv",
                 qk_norm: bool = False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.norm2 = norm_layer(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, drop_rate: float = 0.0) -> torch.Tensor:
        if self.training and drop_rate > 0 and x.shape[0] > 1:
            x = sample_drop_add(x, lambda s: self.attn(self.norm1(s), rope), drop_rate)
            return sample_drop_add(x, lambda s: self.mlp(self.norm2(s)), drop_rate)
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


def sample_drop_add(x: torch.Tensor, branch, rate: float) -> torch.Tensor:
    """x + branch(x) for a random keep = max(1, int(B·(1-rate))) of the B samples, scaled by B/keep; the
    others pass unchanged (DINOv2 `drop_add_residual_stochastic_depth`)."""
    b = x.shape[0]
    keep = max(1, int(b * (1 - rate)))
    idx = torch.randperm(b, device=x.device)[:keep]
    out = branch(x[idx])
    return torch.index_add(x.flatten(1), 0, idx, out.flatten(1).to(x.dtype), alpha=b / keep).view_as(x)
