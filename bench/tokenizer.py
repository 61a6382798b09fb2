"""Tokenizer train step (encoder + bottleneck + decoder, L1, AdamW) vs a timm VisionTransformer
encoder + decoder of the same width, depth and token count, timed in the same run."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class TimmAE(nn.Module):
    """Reference: timm ViT encoder (patch embed, CLS, abs pos) + bottleneck + timm-block decoder."""

    def __init__(self, enc, dec, image_size: int, patch: int, channels: int):
        super().__init__()
        from timm.models.vision_transformer import Block, VisionTransformer

        self.p, self.side = patch, image_size // patch
        self.enc = VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=enc.width, depth=enc.depth,
                                     num_heads=enc.heads, num_classes=0, global_pool="")
        self.bottleneck = nn.Linear(enc.width, channels, bias=False)
        self.up = nn.Linear(channels, dec.width)
        self.dec = nn.Sequential(*[Block(dec.width, dec.heads) for _ in range(dec.depth)])
        self.out = nn.Linear(dec.width, 3 * patch * patch)

    def forward(self, x):
        tok = self.enc.forward_features(x)[:, 1:]
        y = self.out(self.dec(self.up(self.bottleneck(tok))))
        b = x.shape[0]
        y = y.transpose(1, 2).reshape(b, 3 * self.p * self.p, self.side, self.side)
        return F.pixel_shuffle(y, self.p)


def _time(model, fwd, x, iters=5, warmup=2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(warmup + iters):
        if i == warmup:
            t0 = time.perf_counter()
        loss = F.l1_loss(fwd(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / iters


def _case(encoder: str, image_size: int, patch: int, channels: int, batch: int, iters: int) -> dict:
    from vtp_core import registry
    from vtp_core.config import DataConfig, TokenizerConfig
    from vtp_core.tokenizer import build_tokenizer

    torch.manual_seed(0)
    cfg = TokenizerConfig(recipe="ae", encoder=encoder, decoder=encoder, patch=patch, latent_channels=channels,
                          data=DataConfig(image_size=image_size))
    ours = build_tokenizer(cfg)
    enc, dec = registry.get("encoder", encoder), registry.get("decoder", encoder)
    ref = TimmAE(enc, dec, image_size, patch, channels)
    x = torch.randn(batch, 3, image_size, image_size)
    t_ours = _time(ours, lambda v: ours.decode(ours.encode(v)), x, iters)
    t_ref = _time(ref, ref, x, iters)
    return {"bench": f"tokenizer ae step {encoder} {image_size}px/p{patch} b{batch} images/s (ref: timm ViT enc+dec)",
            "value": round(batch / t_ours, 1), "reference": round(batch / t_ref, 1),
            "ratio": round(t_ref / t_ours, 3), "ok": t_ours <= t_ref * 1.05}


def run() -> list[dict]:
    return [_case("tiny", 32, 4, 8, 64, 10), _case("S", 64, 16, 64, 8, 3)]
