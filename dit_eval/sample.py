"""`sample` stage: draw N class-conditional samples from the trained DiT, sharded and resumable.

Why (docs/protocol.md#sampler): the sampler is part of the gFID protocol, so every knob is explicit and
recorded. Both samplers integrate the same flow dx/dt = v(x, t, y) from t = 0 (noise) to 1 (data):

* `euler`: a `steps`-point grid, i.e. steps − 1 updates (as LightningDiT's 250-point grid = 249 Euler
  steps), with the timestep shift t' = s·t/(1+(s−1)·t) (off when s ∈ {0, 1}).
* `dopri5`: torchdiffeq's adaptive Dormand–Prince 5(4) with `rtol`/`atol`. It picks its own steps, so
  the grid (`steps`, `shift`) has no meaning for it: a shifted output grid would only move the points
  where the solution is interpolated, never the end point at t = 1. The last step is cut to land on
  t = 1 (the DiT never sees t > 1), and a guidance interval start is a declared discontinuity (the
  solver steps onto it and restarts there). One step-size control covers a whole batch (the error norm
  is over the batch), so dopri5 integrates fixed runs of `ode_batch` consecutive sample indices: a
  sample's numbers then do not depend on `batch_size`, shards or workers.

Classifier-free guidance, when cfg_scale ≠ 1, is applied to *all* latent channels (LightningDiT guides
only the first 3 channels; that trick is tied to its 4-channel SD-VAE heritage and has no meaning for a
64-channel VTP latent) and only for t ≥ cfg_interval_start, the same way for both samplers. Its null
label (= num_classes) is the row the DiT learned through class dropout; a DiT trained without class
dropout is refused for guided sampling.

Noise of sample i comes from a generator seeded by (seed, i). Labels are either uniform random from that
same generator (`uniform`, as the released code) or `balanced`: a seeded permutation π of the sample
indices and label(i) = π(i) mod num_classes, so every class gets n_samples // num_classes samples (+1 for
the first n_samples mod num_classes classes), and sample i's label is a pure function of (seed, i,
n_samples, num_classes). Either way the images do not depend on batch size, shard size or how many
workers produced them, the noise of sample i is the same under both label policies, and an interrupted
stage regenerates only its missing shards. The number of drift evaluations (NFE) of every sample is
stored with it. Latents are un-standardised with the latents' stats after checking that the DiT was
trained with exactly those stats (hash), then decoded and turned into uint8 by the one conversion
function (`vtp_core.data.to_uint8`).
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dit_eval.latents import load_stats
from dit_eval.models import create_dit
from vtp_core.runtime import Preempted, StageError, atomic_write_bytes, load_checkpoint

# dopri5 gives up (a StageError) after this many steps per run: a drift too noisy for the tolerances
# (e.g. low precision) would otherwise shrink the step without end
DOPRI5_MAX_STEPS = 10000


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """`steps` points from 0 to 1, shifted by t' = s·t / (1 + (s−1)·t) unless s ∈ {0, 1}."""
    if steps < 2:
        raise StageError(f"sample: steps must be >= 2 (grid points), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if shift not in (0, 1):
        t = shift * t / (1 + (shift - 1) * t)
    return t


def _label_seed(seed: int) -> int:
    """Seed of the balanced-label permutation: derived by hash, so it is no per-sample seed (seed << 32) + i."""
    return int.from_bytes(hashlib.sha256(f"vtp-balanced-labels:{seed}".encode()).digest()[:8], "big") >> 1


def balanced_labels(seed: int, start: int, n: int, n_samples: int, num_classes: int) -> torch.Tensor:
    """Labels of samples start..start+n−1: π(i) mod num_classes for a seeded permutation π of range(n_samples)."""
    perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(_label_seed(seed)))
    return perm[start:start + n] % num_classes


def noise_and_labels(seed: int, start: int, n: int, latent_shape, num_classes: int,
                     labels: str = "uniform", n_samples: int | None = None):
    """Per-global-index generators: sample i's noise (and uniform label) depend only on (seed, i)."""
    xs, ys = [], []
    for i in range(start, start + n):
        g = torch.Generator().manual_seed((seed << 32) + i)
        ys.append(torch.randint(0, num_classes, (1,), generator=g))  # drawn under both policies: same noise
        xs.append(torch.randn(tuple(latent_shape), generator=g))
    y = torch.cat(ys)
    if labels == "balanced":
        if n_samples is None:
            raise ValueError("balanced labels need n_samples")
        y = balanced_labels(seed, start, n, n_samples, num_classes)
    elif labels != "uniform":
        raise ValueError(f"unknown label policy {labels!r} (allowed: uniform, balanced)")
    return torch.stack(xs), y


def velocity(model, x: torch.Tensor, t: float, y: torch.Tensor, cfg_scale: float = 1.0,
             cfg_interval_start: float = 0.0, null_label: int | None = None) -> torch.Tensor:
    """The drift at time t in x's dtype: the model output, guided as v_u + s·(v_c − v_u) when s ≠ 1 and
    t ≥ cfg_interval_start."""
    tt = torch.full((len(x),), t, device=x.device, dtype=torch.float32)
    if cfg_scale != 1.0 and t >= cfg_interval_start:
        if null_label is None:
            raise ValueError("CFG needs the null label")
        v_c, v_u = model(torch.cat([x, x]), torch.cat([tt, tt]),
                         torch.cat([y, torch.full_like(y, null_label)])).chunk(2)
        return (v_u + cfg_scale * (v_c - v_u)).to(x.dtype)
    return model(x, tt, y).to(x.dtype)


@torch.no_grad()
def euler_sample(model, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, cfg_scale: float = 1.0,
                 cfg_interval_start: float = 0.0, null_label: int | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t, y) with Euler along `grid`; model output is the drift."""
    if cfg_scale != 1.0 and null_label is None:
        raise ValueError("CFG needs the null label")
    for i in range(len(grid) - 1):
        t, dt = float(grid[i]), float(grid[i + 1] - grid[i])
        x = x + dt * velocity(model, x, t, y, cfg_scale, cfg_interval_start, null_label)
    return x


@torch.no_grad()
def dopri5_sample(model, x: torch.Tensor, y: torch.Tensor, rtol: float, atol: float, cfg_scale: float = 1.0,
                  cfg_interval_start: float = 0.0, null_label: int | None = None) -> tuple[torch.Tensor, int]:
    """Integrate the same flow from t = 0 to 1 with adaptive dopri5; returns (x at t = 1, drift evaluations)."""
    from torchdiffeq import odeint

    if cfg_scale != 1.0 and null_label is None:
        raise ValueError("CFG needs the null label")
    nfe = 0

    def drift(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return velocity(model, z, float(t), y, cfg_scale, cfg_interval_start, null_label)

    span = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"step_t": span[1:], "max_num_steps": DOPRI5_MAX_STEPS}
    if cfg_scale != 1.0 and 0.0 < cfg_interval_start < 1.0:
        options["jump_t"] = torch.tensor([cfg_interval_start], dtype=torch.float64)
    state = x.to(torch.promote_types(x.dtype, torch.float32))
    try:
        out = odeint(drift, state, span.to(x.device), method="dopri5", rtol=rtol, atol=atol, options=options)
    except AssertionError as e:  # torchdiffeq reports a step-count overflow or dt underflow by assert
        raise StageError(f"sample: dopri5 failed ({e}); loosen rtol/atol or sample in higher precision") from None
    return out[-1], nfe


def protocol(cfg) -> dict:
    """The sampler settings a metric's protocol carries: the versioned fields that shape the samples under
    `cfg.sampler` (the grid for euler, the tolerances and run length for dopri5), labels, CFG and EMA."""
    d = {"sampler": cfg.sampler, "labels": cfg.labels, "cfg": cfg.cfg_scale,
         "cfg_interval_start": cfg.cfg_interval_start, "ema": bool(cfg.ema)}
    if cfg.sampler == "euler":
        d.update(steps=cfg.steps, shift=cfg.shift)
    else:
        d.update(rtol=cfg.rtol, atol=cfg.atol, ode_batch=cfg.ode_batch)
    return d


def read_protocol(sample_dir: Path) -> dict:
    """A finished sample stage's protocol (metrics.json, else recomputed from its config.yaml)."""
    sample_dir = Path(sample_dir)
    m = sample_dir / "metrics.json"
    if m.is_file():
        d = json.loads(m.read_text())
        if "protocol" not in d:
            raise StageError(f"{m} has no sampler protocol: re-run the sample stage")
        return d["protocol"]
    c = sample_dir / "config.yaml"
    if not c.is_file():
        raise StageError(f"{sample_dir} has neither metrics.json nor config.yaml")
    import yaml

    from dit_eval.config import SampleConfig
    from vtp_core.cfg import load

    return protocol(load(SampleConfig, yaml.safe_load(c.read_text()), str(c)))


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
    if cfg.cfg_scale != 1.0 and not spec["class_dropout"] > 0:
        raise StageError(f"sample: cfg_scale {cfg.cfg_scale} needs the null label, but this DiT was trained with "
                         f"class_dropout {spec['class_dropout']} (never saw it); use cfg_scale 1 or class_dropout > 0")
    if cfg.sampler == "dopri5" and cfg.shard_size % cfg.ode_batch:
        raise StageError(f"sample: shard_size {cfg.shard_size} is not a multiple of ode_batch {cfg.ode_batch}")
    shape = list(dit_ckpt["latent_shape"])
    num_classes = spec["num_classes"]
    model = create_dit(spec["size"], shape[0], shape[1], num_classes, spec["class_dropout"])
    model.load_state_dict(dit_ckpt["ema" if cfg.ema else "model"])
    model.to(device).eval()
    mean = stats["mean"].view(1, -1, 1, 1).to(device)
    std = stats["std"].view(1, -1, 1, 1).to(device)
    grid = time_grid(cfg.steps, cfg.shift) if cfg.sampler == "euler" else None
    run_len = cfg.batch_size if cfg.sampler == "euler" else cfg.ode_batch
    cuda = torch.device(device).type == "cuda"

    def integrate(x, y):
        if cfg.sampler == "euler":
            return euler_sample(model, x, y, grid, cfg.cfg_scale, cfg.cfg_interval_start, num_classes), len(grid) - 1
        return dopri5_sample(model, x, y, cfg.rtol, cfg.atol, cfg.cfg_scale, cfg.cfg_interval_start, num_classes)

    from tqdm.auto import tqdm

    starts = list(range(0, cfg.n_samples, cfg.shard_size))
    todo = [s for s in starts if not shard_path(out, s).exists()]
    for s in tqdm(todo, desc="sample", disable=not progress, leave=False):
        if stop_requested():
            raise Preempted("sample: stop requested; finished shards are kept")
        n = min(cfg.shard_size, cfg.n_samples - s)
        x_all, y_all = noise_and_labels(cfg.seed, s, n, shape, num_classes, cfg.labels, cfg.n_samples)
        images, nfe = [], []
        for b in range(0, n, run_len):
            x, y = x_all[b:b + run_len].to(device), y_all[b:b + run_len].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                z, k = integrate(x, y)
            nfe += [k] * len(x)
            z = z.float() * std + mean
            if not torch.isfinite(z).all():
                raise StageError(f"sample: non-finite latents in shard starting at {s}")
            with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
                images.append(to_uint8(decode(z)))
        buf = io.BytesIO()
        np.savez(buf, images=np.concatenate(images), labels=y_all.numpy(), nfe=np.asarray(nfe, dtype=np.int64))
        atomic_write_bytes(shard_path(out, s), buf.getvalue())
    nfe_all = load_nfe(out)
    return {"n_samples": cfg.n_samples, "sampler": cfg.sampler, "steps": cfg.steps, "shift": cfg.shift,
            "rtol": cfg.rtol, "atol": cfg.atol, "ode_batch": cfg.ode_batch, "labels": cfg.labels,
            "cfg": cfg.cfg_scale, "cfg_interval_start": cfg.cfg_interval_start, "ema": bool(cfg.ema),
            "seed": cfg.seed, "protocol": protocol(cfg), "stats_hash": stats["hash"],
            "nfe_mean": float(nfe_all.mean()), "nfe_min": int(nfe_all.min()), "nfe_max": int(nfe_all.max()),
            "n_shards": len(starts), "n_shards_generated": len(todo), "wall_s": round(time.time() - t0, 3)}


def load_nfe(sample_dir: Path) -> np.ndarray:
    """Drift evaluations of every sample, in index order (stored with each shard)."""
    paths = sorted((Path(sample_dir) / "samples").glob("shard-*.npz"))
    if not paths:
        raise StageError(f"no sample shards in {Path(sample_dir) / 'samples'}")
    out = []
    for p in paths:
        with np.load(p) as f:
            out.append(f["nfe"])
    return np.concatenate(out)


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
