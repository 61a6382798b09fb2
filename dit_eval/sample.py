"""`sample` stage: draw N class-conditional samples from the trained DiT, sharded and resumable.

Why (docs/protocol.md#sampler): the sampler is part of the gFID protocol, so every knob is explicit and
recorded. Euler ODE on a `steps`-point grid from t = 0 (noise) to 1 (data), i.e. steps − 1 updates
(as LightningDiT's 250-point grid = 249 Euler steps), with the timestep shift t' = s·t/(1+(s−1)·t)
(off when s ∈ {0, 1}). Classifier-free guidance, when cfg_scale ≠ 1, is applied to *all* latent
channels (LightningDiT guides only the first 3 channels; that trick is tied to its 4-channel SD-VAE
heritage and has no meaning for a 64-channel VTP latent) and only for t ≥ cfg_interval_start.

Noise and label of sample i come from a generator seeded by (seed, i), so the images do not depend
on batch size, shard size or how many workers produced them, and an interrupted stage regenerates
only its missing shards. Latents are un-standardised with the latents' stats after checking that
the DiT was trained with exactly those stats (hash), then decoded and turned into uint8 by the one
conversion function (`vtp_core.data.to_uint8`).
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dit_eval.latents import load_stats
from dit_eval.models import create_dit
from vtp_core.runtime import Preempted, StageError, atomic_write_bytes, load_checkpoint



def time_grid(steps: int, shift: float) -> torch.Tensor:
    """`steps` points from 0 to 1, shifted by t' = s·t / (1 + (s−1)·t) unless s ∈ {0, 1}."""
    if steps < 2:
        raise StageError(f"sample: steps must be >= 2 (grid points), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if shift not in (0, 1):
        t = shift * t / (1 + (shift - 1) * t)
    return t


def noise_and_labels(seed: int, start: int, n: int, latent_shape, num_classes: int):
    """Per-global-index generators: sample i's noise/label depend only on (seed, i)."""
    xs, ys = [], []
    for i in range(start, start + n):
        g = torch.Generator().manual_seed((seed << 32) + i)
        ys.append(torch.randint(0, num_classes, (1,), generator=g))
        xs.append(torch.randn(tuple(latent_shape), generator=g))
    return torch.stack(xs), torch.cat(ys)


@torch.no_grad()
def euler_sample(model, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, cfg_scale: float = 1.0,
                 cfg_interval_start: float = 0.0, null_label: int | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t, y) with Euler along `grid`; model output is the drift."""
    guided = cfg_scale != 1.0
    if guided and null_label is None:
        raise ValueError("CFG needs the null label")
    for i in range(len(grid) - 1):
        t, dt = float(grid[i]), float(grid[i + 1] - grid[i])
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.float32)
        if guided and t >= cfg_interval_start:
            v_c, v_u = model(torch.cat([x, x]), torch.cat([tt, tt]),
                             torch.cat([y, torch.full_like(y, null_label)])).chunk(2)
            v = v_u + cfg_scale * (v_c - v_u)
        else:
            v = model(x, tt, y)
        x = x + dt * v.float()
    return x


def shard_path(out: Path, start: int) -> Path:
    return Path(out) / "samples" / f"shard-{start:08d}.npz"


def generate_shards(cfg, out: Path, dit_ckpt: dict, stats: dict, decode: Callable, to_uint8: Callable,
                    device: str = "cpu", progress: bool = False, stop_requested=lambda: False) -> dict:
    """The stage body (tokenizer decode and uint8 conversion injected); skips shards already on disk."""
    t0 = time.time()
    if dit_ckpt["stats_hash"] != stats["hash"]:
        raise StageError(f"sample: DiT was trained on latent stats {dit_ckpt['stats_hash']} but the latents "
                         f"stage has {stats['hash']}: refusing to un-standardise with different stats")
    spec = dit_ckpt["spec"]
    shape = list(dit_ckpt["latent_shape"])
    model = create_dit(spec["size"], shape[0], shape[1], spec["num_classes"], spec["class_dropout"])
    model.load_state_dict(dit_ckpt["ema" if cfg.ema else "model"])
    model.to(device).eval()
    mean = stats["mean"].view(1, -1, 1, 1).to(device)
    std = stats["std"].view(1, -1, 1, 1).to(device)
    grid = time_grid(cfg.steps, cfg.shift)
    cuda = torch.device(device).type == "cuda"

    from tqdm.auto import tqdm

    starts = list(range(0, cfg.n_samples, cfg.shard_size))
    todo = [s for s in starts if not shard_path(out, s).exists()]
    for s in tqdm(todo, desc="sample", disable=not progress, leave=False):
        if stop_requested():
            raise Preempted("sample: stop requested; finished shards are kept")
        n = min(cfg.shard_size, cfg.n_samples - s)
        x_all, y_all = noise_and_labels(cfg.seed, s, n, shape, spec["num_classes"])
        images = []
        for b in range(0, n, cfg.batch_size):
            x, y = x_all[b:b + cfg.batch_size].to(device), y_all[b:b + cfg.batch_size].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                z = euler_sample(model, x, y, grid, cfg.cfg_scale, cfg.cfg_interval_start, spec["num_classes"])
            z = z.float() * std + mean
            if not torch.isfinite(z).all():
                raise StageError(f"sample: non-finite latents in shard starting at {s}")
            with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
                images.append(to_uint8(decode(z)))
        buf = io.BytesIO()
        np.savez(buf, images=np.concatenate(images), labels=y_all.numpy())
        atomic_write_bytes(shard_path(out, s), buf.getvalue())
    return {"n_samples": cfg.n_samples, "sampler": cfg.sampler, "steps": cfg.steps, "shift": cfg.shift,
            "cfg": cfg.cfg_scale, "cfg_interval_start": cfg.cfg_interval_start, "ema": bool(cfg.ema),
            "seed": cfg.seed, "stats_hash": stats["hash"], "n_shards": len(starts),
            "n_shards_generated": len(todo), "wall_s": round(time.time() - t0, 3)}


def load_samples(sample_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """All sample shards in index order: (uint8 NHWC images, labels)."""
    paths = sorted((Path(sample_dir) / "samples").glob("shard-*.npz"))
    if not paths:
        raise StageError(f"no sample shards in {Path(sample_dir) / 'samples'}")
    imgs, labs = [], []
    for p in paths:
        with np.load(p) as f:
            imgs.append(f["images"])
            labs.append(f["labels"])
    return np.concatenate(imgs), np.concatenate(labs)


def run(cfg, ctx) -> dict:
    """Stage entry: DiT from `dit`, stats from `latents`, decoder from `pretrain`."""
    from vtp_core.data import to_uint8
    from vtp_core.tokenizer import load_tokenizer

    dit_path = ctx.input("dit") / "dit.pt"
    if not dit_path.is_file():
        raise StageError(f"sample: {dit_path} missing (dit stage not finished)")
    stats = load_stats(ctx.input("latents"))
    tokenizer = load_tokenizer(ctx.input("pretrain"), ctx.device)
    tokenizer.eval()
    return generate_shards(cfg, ctx.out, load_checkpoint(dit_path), stats, tokenizer.decode, to_uint8,
                           ctx.device, ctx.progress, ctx.stop_requested)
