"""Stage 2 of VTP: GAN fine-tuning of the pixel decoder with the encoder (and bottleneck) frozen.

Why a separate stage: a GAN loss through a ViT encoder is unstable (docs/method.md#stage-2), and freezing the
encoder keeps the latents - hence the downstream DiT - identical to stage 1. Per step: decoder loss
L1 (+LPIPS) + adaptive-weight · hinge GAN (from `disc_start` on), one AdamW step; then one
discriminator step on real vs detached reconstructions. Batches are the stage-1 reconstruction
sub-batches at steps `steps + k` (a pure function of seed and step), so resume stays exact.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from vtp_core import distributed
from vtp_core.batches import make_batch
from vtp_core.config import TokenizerConfig
from vtp_core.losses.gan import PatchGAN, adaptive_weight, hinge_d_loss, hinge_g_loss
from vtp_core.losses.rec import reconstruction_loss
from vtp_core.runtime import Diverged, Preempted, StageContext, adamw
from vtp_core.tokenizer import Tokenizer


class Stage2:
    """Discriminator + the two optimizers; `state_dict`/`load_state_dict` for the checkpoint."""

    def __init__(self, model: Tokenizer, cfg: TokenizerConfig, device: torch.device):
        self.disc = PatchGAN(3, cfg.disc_channels, cfg.disc_layers).to(device)
        self.opt_g = adamw(model.decoder.parameters(), device, lr=cfg.stage2_lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.opt_d = adamw(self.disc.parameters(), device, lr=cfg.stage2_lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "disc": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        self.step = st["step"]
        self.disc.load_state_dict(st["disc"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])


def generator_losses(model: Tokenizer, disc: PatchGAN, x: torch.Tensor, cfg: TokenizerConfig, lpips,
                     gan_on: bool) -> dict[str, torch.Tensor]:
    """Decoder objective on frozen latents: rec + w·hinge-G, w the detached adaptive weight."""
    with torch.no_grad():
        z = model.encode(x)
    x_hat = model.decode(z.float())
    rec = reconstruction_loss(x_hat, x, lpips, cfg.lambda_lpips)["rec"]
    g = w = rec.new_zeros(())
    if gan_on:
        disc.requires_grad_(False)  # gradients flow through D to the decoder only
        g = hinge_g_loss(disc(x_hat.float()))
        disc.requires_grad_(True)
        w = adaptive_weight(rec, g, model.decoder.conv_out.weight, cfg.disc_weight)
    return {"rec": rec, "g": g, "gan_weight": w, "total": rec + w * g, "x_hat": x_hat}


def discriminator_loss(disc: PatchGAN, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return hinge_d_loss(disc(x), disc(x_hat.detach().float()))


def train(model: Tokenizer, s2: Stage2, cfg: TokenizerConfig, ctx: StageContext, data: tuple, lpips,
          save: Callable[[], None], on_step: Callable[[dict], None]) -> dict[str, float]:
    """Run stage-2 steps s2.step .. cfg.stage2_steps; returns the last step's losses."""
    images, labels = data
    device = next(model.parameters()).device
    model.encoder.requires_grad_(False)
    model.encoder.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    losses: dict[str, float] = {}
    while s2.step < cfg.stage2_steps:
        x = make_batch(cfg, images, labels, cfg.steps + s2.step, ("rec",), None, device)["rec_images"]
        gan_on = s2.step >= cfg.disc_start
        with autocast:  # --- decoder (generator) step
            gl = generator_losses(model, s2.disc, x, cfg, lpips, gan_on)
        check = distributed.mean_across(gl["total"].detach())
        if not torch.isfinite(check):
            raise Diverged(cfg.steps + s2.step, float(check))
        s2.opt_g.zero_grad(set_to_none=True)
        gl["total"].backward()
        distributed.average_gradients(model.decoder.parameters())
        torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), cfg.grad_clip or math.inf)
        s2.opt_g.step()
        d = torch.zeros((), device=device)
        if gan_on:  # --- discriminator step
            with autocast:
                d = discriminator_loss(s2.disc, x, gl["x_hat"])
            s2.opt_d.zero_grad(set_to_none=True)
            d.backward()
            distributed.average_gradients(s2.disc.parameters())
            s2.opt_d.step()
        s2.step += 1
        logged = torch.stack([gl[k].detach().float() for k in ("rec", "g", "gan_weight")] + [d.detach().float()])
        losses = dict(zip(("rec", "g", "gan_weight", "d"), distributed.mean_across(logged).tolist()))  # global means
        on_step(losses)
        stop = distributed.any_across(ctx.stop_requested())
        if s2.step % cfg.ckpt_every == 0 or stop:
            save()
            if stop and s2.step < cfg.stage2_steps:
                raise Preempted(f"stage 2 stopped at step {s2.step}; checkpoint {ctx.ckpt_path}")
    return losses
