"""The `Tokenizer` module: encoder + bottleneck + pixel decoder (+ text tower, CLIP projection, DINO head).

Why one module: downstream stages load a single file (`tokenizer.pt` = {"config", "model"}) and
use a small API (`encode`, `decode`, `features`, `image_text`) without knowing the recipe. The
heads that a recipe does not train are not built (an `ae` tokenizer has no text tower).
Images enter as float NCHW in [-1, 1] (`vtp_core.data.normalize`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core import registry
from vtp_core.cfg import load, to_dict
from vtp_core.config import RECIPES, TokenizerConfig
from vtp_core.losses.clip import LOGIT_SCALE_INIT
from vtp_core.models.heads import DINOHead
from vtp_core.models.text import TextTower, tokenize
from vtp_core.models.vit import PixelDecoder, ViTEncoder
from vtp_core.runtime import StageError, load_checkpoint

def text_size(cfg: TokenizerConfig, size: registry.TextSize | None = None) -> registry.TextSize:
    size = size or registry.get("text", cfg.text)
    if cfg.text_context:
        size = dataclasses.replace(size, context_length=cfg.text_context)
    return size


class Tokenizer(nn.Module):
    """Everything stage 1 trains except the EMA teacher (see `pretrain`)."""

    def __init__(self, cfg: TokenizerConfig, sizes: dict | None = None):
        """`sizes` may override the registry lookups ({'encoder'|'decoder'|'text': size}), e.g. for FLOPs."""
        super().__init__()
        sizes = sizes or {}
        if cfg.recipe not in RECIPES:  # choices are checked when a config is loaded; this is a code path's guard
            raise StageError(f"TokenizerConfig.recipe: '{cfg.recipe}' unknown; valid: {', '.join(RECIPES)}")
        self.cfg = cfg
        self.sizes: dict = {}  # the resolved sizes, saved in tokenizer.pt so custom sizes reload anywhere
        self.lambda_clip, self.lambda_ssl = RECIPES[cfg.recipe]
        enc = self.sizes["encoder"] = sizes.get("encoder") or registry.get("encoder", cfg.encoder)
        dec = self.sizes["decoder"] = sizes.get("decoder") or registry.get("decoder", cfg.decoder)
        self.encoder = ViTEncoder(enc, cfg.patch, cfg.latent_channels, rope_base=cfg.rope_base, qkv_bias=cfg.qkv_bias,
                                  qk_norm=cfg.qk_norm)  # QKNorm on the encoder; the released decoder has none
        self.decoder = PixelDecoder(dec, cfg.patch, cfg.latent_channels, rope_base=cfg.rope_base, qkv_bias=cfg.qkv_bias)
        head_in = enc.width if cfg.heads_read == "pre_bottleneck" else cfg.latent_channels
        if self.lambda_clip:
            ts = self.sizes["text"] = text_size(cfg, sizes.get("text"))
            self.text = TextTower(ts)
            self.visual_proj = nn.Linear(head_in, ts.embed_dim, bias=False)
            nn.init.trunc_normal_(self.visual_proj.weight, std=0.02)
            self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        if self.lambda_ssl:
            self.dino_head = DINOHead(head_in, cfg.dino_prototypes, cfg.dino_hidden, cfg.dino_bottleneck)

    # ------------------------------------------------------------ building blocks used by the trainer
    def head_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the CLIP/DINO heads read: final-norm D-dim tokens, or their bottleneck projection."""
        return tokens if self.cfg.heads_read == "pre_bottleneck" else self.encoder.bottleneck(tokens)

    @property
    def has_clip(self) -> bool:
        return bool(self.lambda_clip)

    # ------------------------------------------------------------ public API (docs/CONTRACTS.md)
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [-1,1] -> latent (B, c, H/p, W/p)."""
        return self.encoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B,c,h,w) -> images (B,3,h*p,w*p) in [-1,1] space (not clamped)."""
        return self.decoder(z)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'pre': final-norm CLS (B,D), 'bottleneck': mean-pooled latent (B,c)} for linear probes."""
        t, _ = self.encoder.tokens(x)
        return {"pre": t[:, 0], "bottleneck": self.encoder.bottleneck(t[:, 1:]).mean(1)}

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embedding (B,E): visual projection of the CLS token."""
        self._need_clip()
        t, _ = self.encoder.tokens(x)
        return F.normalize(self.visual_proj(self.head_input(t[:, 0])), dim=-1)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """L2-normalised CLIP text embedding (N,E) of raw caption strings."""
        self._need_clip()
        ids = tokenize(captions, self.text.size.context_length).to(self.logit_scale.device)
        return F.normalize(self.text(ids), dim=-1)

    def image_text(self, x: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """{'image': (B,E), 'text': (N,E) normalised embeddings, 'logit_scale': exp(clamped scale)}."""
        scale = self.logit_scale.clamp(max=self.cfg.logit_scale_max).exp()
        return {"image": self.embed_image(x), "text": self.embed_text(captions), "logit_scale": scale}

    def _need_clip(self) -> None:
        if not self.has_clip:
            raise StageError(f"recipe '{self.cfg.recipe}' has no CLIP head (no image/text embeddings)")


def build_tokenizer(cfg: TokenizerConfig, device: str | torch.device = "cpu") -> Tokenizer:
    with torch.device(device):
        return Tokenizer(cfg)


def tokenizer_payload(model: Tokenizer) -> dict:
    """What `tokenizer.pt` holds (CONTRACTS.md): the full config, the resolved sizes, the state dict (CPU)."""
    return {"config": to_dict(model.cfg), "sizes": {k: dataclasses.asdict(v) for k, v in model.sizes.items()},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_tokenizer(stage_dir: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """The trained tokenizer of a `pretrain` stage folder, in eval mode on `device`."""
    path = Path(stage_dir) / "tokenizer.pt"
    if not path.is_file():
        raise StageError(f"{path} not found (is the pretrain stage done?)")
    blob = load_checkpoint(path)
    cfg = load(TokenizerConfig, blob["config"], str(path), strict=False, validate=False)  # our own file
    kinds = {"encoder": registry.ViTSize, "decoder": registry.ViTSize, "text": registry.TextSize}
    model = Tokenizer(cfg, {k: kinds[k](**v) for k, v in blob.get("sizes", {}).items()})
    model.load_state_dict(blob["model"])
    return model.to(device).eval()
