"""Tokenizer train step (encoder + bottleneck + decoder, L1, AdamW) on a GPU, against a timm VisionTransformer
encoder + decoder of the same width, depth and token count timed in the same run.

The S and B steps run at their training shape (256 px / p16, 257 tokens) in bf16 (autocast, fused AdamW, SDPA),
eager and `torch.compile`d (ours as the trainer compiles it, each block: `compile_towers`; the reference whole),
and each row adds MFU: the step's FLOPs counted by `torch.utils.flop_counter` on the step itself, per second,
over the GPU's dense bf16 peak (`bench/peaks.py`). The two sides alternate in time over several rounds (the
order flipped every round) and the row reports medians, so machine drift hits both alike. Without CUDA the rows
say so and are skipped: this is a GPU benchmark (the CPU is not a target of this project)."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.peaks import peak_tflops
from vtp_core.runtime import adamw

SIZES = ("S", "B")
COMPILED = (None, "inductor")


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


class _Stepper:
    """One model's train step (forward, L1, backward, the trainers' AdamW) on a fixed batch."""

    def __init__(self, side: str, model: nn.Module, fwd, x: torch.Tensor):
        self.side, self.model, self.fwd, self.x = side, model, fwd, x
        self.opt = adamw(model.parameters(), x.device, lr=1e-4)  # the trainers' optimizer, same for both sides
        self.cuda = x.is_cuda

    def step(self) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            loss = F.l1_loss(self.fwd(self.x).float(), self.x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def seconds(self, iters: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters

    def flops(self) -> int:
        from vtp_core.flops import flop_counter_mode

        with flop_counter_mode() as counter:  # attention counted alike on both sides, whichever kernel runs it
            self.step()
        return counter.get_total_flops()

    def compile(self, backend: str) -> None:
        """Ours as the trainer compiles it (`compile_towers`: each block), the reference whole; then one step,
        so the compilation happens here and not inside a timed round."""
        if self.side == "ours":
            from vtp_core.pretrain import compile_towers

            compile_towers(self.model, backend=backend)
        else:
            self.model.compile(dynamic=False, backend=backend)
        self.step()


def ae_step(encoder: str, image_size: int, patch: int, channels: int, batch: int, device: str) -> _Stepper:
    """Ours: the `ae` tokenizer as the trainer builds it (decoder of the encoder's size), on a fixed batch."""
    from vtp_core.config import DataConfig, TokenizerConfig
    from vtp_core.tokenizer import build_tokenizer

    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    torch.manual_seed(0)
    cfg = TokenizerConfig(recipe="ae", encoder=encoder, decoder=encoder, patch=patch, latent_channels=channels,
                          data=DataConfig(image_size=image_size))
    model = build_tokenizer(cfg).to(device)
    return _Stepper("ours", model, lambda v: model.decode(model.encode(v)), x)


def _pair(encoder: str, image_size: int, patch: int, channels: int, batch: int,
          device: str) -> tuple[_Stepper, _Stepper]:
    """Ours (`ae_step`) and the reference, on the same fixed batch."""
    from vtp_core import registry

    ours = ae_step(encoder, image_size, patch, channels, batch, device)
    torch.manual_seed(0)
    ref_model = TimmAE(registry.get("encoder", encoder), registry.get("decoder", encoder), image_size, patch,
                       channels).to(device)
    return ours, _Stepper("ref", ref_model, ref_model, ours.x)


def _alternate(ours: _Stepper, ref: _Stepper, rounds: int, iters: int,
               warmup: int = 2) -> tuple[float, float, float, tuple[float, float]]:
    """Median seconds/step of ours and ref, the median of the per-round ratios ref/ours and their
    quartiles (the row's own spread: a ratio inside it is parity). The order flips every round (ours-ref,
    ref-ours, ...), so neither side always inherits the other's caches."""
    from dit_eval.bench import alternate

    for s in (ours, ref):
        for _ in range(warmup):
            s.step()
    t_ours, t_ref = alternate(ours.seconds, ref.seconds, rounds, iters)
    ratios = [r / o for o, r in zip(t_ours, t_ref)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3  # one round: its own spread
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios), (q1, q3)


def _peak_tflops() -> float | None:
    return peak_tflops(torch.cuda.get_device_name())


def _sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant figures."""
    return float(f"{x:.{digits}g}")


def _case(encoder: str, image_size: int, patch: int, channels: int, batch: int, rounds: int, iters: int,
          device: str = "cuda", compiled: str | None = None) -> dict:
    """One row; `compiled`: a torch.compile backend for both sides ("inductor" on the GPU), or None (eager).
    On CUDA the row adds TFLOP/s and MFU and is "ok" at >= 40 % MFU with ours at least 0.98x the reference."""
    ours, ref = _pair(encoder, image_size, patch, channels, batch, device)
    step_flops, ref_flops = ours.flops(), ref.flops()  # counted eagerly: the compiled step is the same step
    if compiled:
        ours.compile(compiled)
        ref.compile(compiled)
    t_ours, t_ref, ratio, (q1, q3) = _alternate(ours, ref, rounds, iters, warmup=4)
    where = device + (f" compiled ({compiled})" if compiled else "")
    row = {"bench": f"tokenizer ae step {encoder} {image_size}px/p{patch} b{batch} {where} images/s "
                    f"(ref: timm ViT enc+dec; median of {rounds} alternated rounds, quartiles {q1:.3f}-{q3:.3f}; "
                    f"FLOPs ours/ref {step_flops / ref_flops:.3f}; step {t_ours * 1e3:.4g} / {t_ref * 1e3:.4g} ms)",
           "value": _sig(batch / t_ours), "reference": _sig(batch / t_ref), "ratio": round(ratio, 3),
           "ok": ratio >= 0.98}
    if device == "cuda":
        peak = _peak_tflops()
        achieved = step_flops / t_ours / 1e12
        row["bench"] += f"; {achieved:.0f} TFLOP/s bf16"
        if peak:
            row["bench"] += f", MFU {achieved / peak:.1%} of {peak:.0f}"
            row["ok"] = row["ok"] and achieved / peak >= 0.40
    return row


def _skipped(size: str, compiled: str | None) -> dict:
    where = " compiled (inductor)" if compiled else ""
    return {"bench": f"tokenizer ae step {size} 256px/p16 b64 cuda{where} images/s, MFU (ref: timm ViT enc+dec)",
            "value": "skipped: no CUDA", "reference": None, "ratio": None, "ok": None}


def run() -> list[dict]:
    """S and B at their training shape, batch 64, eager and compiled, on CUDA; skipped rows without it."""
    if not torch.cuda.is_available():
        return [_skipped(size, compiled) for compiled in COMPILED for size in SIZES]
    return [_case(size, 256, 16, 64, 64, rounds=5, iters=10, device="cuda", compiled=compiled)
            for compiled in COMPILED for size in SIZES]
