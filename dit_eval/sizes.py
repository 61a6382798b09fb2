"""The DiT size registry alone (no torch import), so validating a study is instant.

`tiny` is sized for the embedded demo (8x8x8 latents, 2 CPU cores); S/B/L/XL follow LightningDiT
(docs/method.md#model-sizes). `dit_eval.models` builds them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiTSize:
    depth: int
    width: int
    heads: int
    patch: int = 1


_SIZES: dict[str, DiTSize] = {
    "tiny": DiTSize(depth=2, width=32, heads=2),
    "S/1": DiTSize(depth=12, width=384, heads=6),
    "B/1": DiTSize(depth=12, width=768, heads=12),
    "L/1": DiTSize(depth=24, width=1024, heads=16),
    "XL/1": DiTSize(depth=28, width=1152, heads=16),
}


def list_sizes() -> list[str]:
    return list(_SIZES)


def get_size(name: str) -> DiTSize:
    try:
        return _SIZES[name]
    except KeyError:
        raise ValueError(f"unknown DiT size {name!r}; valid: {', '.join(_SIZES)}") from None
