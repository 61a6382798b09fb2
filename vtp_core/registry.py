"""Model sizes registered by name (timm style): `tiny`, `S`, `B`, `L`, ...

Why a registry: sweeps name sizes in YAML (`encoder: [S, B, L]`); the planner validates them with
`list_sizes` and the FLOPs/params of a size come from building exactly what the trainer builds.
Register a custom size with `register("encoder", "XS", ViTSize(...))`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ViTSize:
    """A transformer stack: width, depth, heads, MLP ratio (SwiGLU hidden = int(ratio*D*2/3), align 8)."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 4:
            raise ValueError(f"head dim {self.width // self.heads} must be a multiple of 4 (axial 2D RoPE)")


@dataclass(frozen=True)
class TextSize:
    """A causal text transformer (OpenCLIP style): width, depth, heads, context length, output dim."""

    width: int
    depth: int
    heads: int
    context_length: int = 77
    embed_dim: int = 768  # joint CLIP embedding dim (text projection output)
    mlp_ratio: float = 4.0
    vocab_size: int = 49408  # < 49408: BPE ids are hashed into a smaller table (see models/text.py)


_REGISTRY: dict[str, dict[str, object]] = {
    "encoder": {
        "tiny": ViTSize(64, 2, 2),
        "S": ViTSize(384, 12, 6),
        "B": ViTSize(768, 12, 12),
        "L": ViTSize(1024, 24, 16),
    },
    "decoder": {
        "tiny": ViTSize(64, 2, 2),
        "S": ViTSize(384, 12, 6),
        "B": ViTSize(768, 12, 12),
        "L": ViTSize(1024, 24, 16),
        "L4": ViTSize(1024, 4, 16),
    },
    "text": {
        "tiny": TextSize(64, 2, 2, context_length=16, embed_dim=64, vocab_size=4096),
        "base": TextSize(768, 12, 12, context_length=77, embed_dim=768),
    },
}


def register(kind: str, name: str, size: ViTSize | TextSize, overwrite: bool = False) -> None:
    """Add a size under `kind` ('encoder' | 'decoder' | 'text')."""
    table = _table(kind)
    if name in table and not overwrite:
        raise ValueError(f"{kind} size '{name}' already registered (pass overwrite=True to replace)")
    want = TextSize if kind == "text" else ViTSize
    if not isinstance(size, want):
        raise TypeError(f"{kind} sizes must be {want.__name__}, got {type(size).__name__}")
    table[name] = size


def list_sizes(kind: str) -> list[str]:
    """Registered size names for `kind` in registration order."""
    return list(_table(kind))


def get(kind: str, name: str) -> ViTSize | TextSize:
    table = _table(kind)
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} size '{name}'; registered: {', '.join(table)}") from None


def swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    """int(ratio*D*2/3) rounded up to a multiple of 8 (DINOv3 SwiGLU; 1024/2048/2736 for S/B/L)."""
    return int(math.ceil(int(width * mlp_ratio * 2 / 3) / 8) * 8)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _table(kind: str) -> dict[str, object]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown size kind '{kind}'; valid: {', '.join(_REGISTRY)}") from None
